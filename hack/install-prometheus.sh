#!/usr/bin/env bash
# Prometheus server and promtool from Debian's `prometheus` package, for the
# alert-rule tests (`promtool check/test rules`) and the dashboard test (a real
# Prometheus scraping the operator).  The tests start their own server on a
# loopback port with a temporary config; the packaged system service must not
# keep running, so we stop it if the install started one.
set -euo pipefail

if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
  echo "prometheus already installed: $(prometheus --version 2>&1 | head -1)"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[[ $(id -u) == 0 ]] || SUDO="sudo"
if ! $SUDO apt-get install -y --no-install-recommends prometheus; then
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends prometheus
fi
# Debian's postinst may start the service where an init system runs.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  $SUDO systemctl stop prometheus || true
  $SUDO systemctl disable prometheus || true
elif command -v service >/dev/null && service prometheus status >/dev/null 2>&1; then
  $SUDO service prometheus stop || true
fi
prometheus --version 2>&1 | head -1
