#!/usr/bin/env bash
# Build the images the node tests run (tests/node), without a registry or a
# Docker engine: buildah (daemonless) builds the project's own Dockerfiles on a
# Debian base made by debootstrap from Debian's packages, since no base image
# can be pulled here.  Images live in buildah's storage (/var/lib/containers,
# outside the checkout); --layers reuses every step whose inputs did not
# change, so the dependency layer is rebuilt only when the Dockerfile or the
# pins in pyproject.toml change and a code change rebuilds the last layer only.
# (Docker format, so SHELL is honoured.)  Each image is then written as an OCI archive into $CACHE/images/, which the
# node fixture imports into containerd (only when its digest changed):
#   localhost/reverie/pause:1       the pod sandbox (hack/node/pause.c, static)
#   localhost/reverie/operator:node images/operator/Dockerfile
#   localhost/reverie/trainer:node  images/trainer/Dockerfile
# The dreamer image (vLLM, CUDA) is GPU-only: the node tests run dreaming in the trainer image.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${REVERIE_CACHE:-$HOME/.cache/reverie}/images"
SUITE=bookworm
DEBIAN="localhost/reverie/debian:$SUITE-1"
BASE="localhost/reverie/base:$SUITE"
HOST_CA=/etc/ssl/certs/ca-certificates.crt
MIRROR="${REVERIE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
mkdir -p "$CACHE"
export BUILDAH_ISOLATION=chroot  # RUN steps without a runtime or network namespace: pip reaches its index

have() { buildah inspect --type image "$1" > /dev/null 2>&1; }

if ! have "$DEBIAN"; then
  echo "==> $DEBIAN: debootstrap $SUITE (minbase + python3)"
  root="$(mktemp -d /var/tmp/reverie-rootfs.XXXXXX)"
  trap 'rm -rf "$root" "$root.tar"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd "$SUITE" "$root" "$MIRROR" > "$CACHE/debootstrap.log"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" -cf "$root.tar" .
  ctr="$(buildah from scratch)"
  buildah add --quiet "$ctr" "$root.tar" / > /dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$ctr"
  buildah commit --quiet --rm "$ctr" "$DEBIAN" > /dev/null
  rm -rf "$root" "$root.tar"
  trap - EXIT
fi

# The base: Debian's, trusting what this machine trusts (its CA bundle, which may hold a
# proxy's CA), so pip in the builds reaches the index the way the host's pip does.
if ! have "$BASE" || ! cmp -s "$HOST_CA" "$CACHE/ca-certificates.crt"; then
  echo "==> $BASE: $DEBIAN with this machine's CA bundle"
  ctr="$(buildah from "$DEBIAN")"
  buildah copy --quiet "$ctr" "$HOST_CA" /etc/ssl/certs/ca-certificates.crt > /dev/null
  buildah config --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt "$ctr"
  buildah commit --quiet --rm "$ctr" "$BASE" > /dev/null
  cp "$HOST_CA" "$CACHE/ca-certificates.crt"
fi

# export IMAGE NAME: write the image as $CACHE/NAME.tar unless that archive already holds this image ID.
export_archive() {
  local image="$1" name="$2" id
  id="$(buildah inspect --type image --format '{{.FromImageID}}' "$image")"
  if [[ -f "$CACHE/$name.tar" && "$(cat "$CACHE/$name.id" 2>/dev/null)" == "$id" ]]; then
    echo "    $image unchanged ($CACHE/$name.tar)"
    return
  fi
  rm -f "$CACHE/$name.tar" "$CACHE/$name.id"
  buildah push --quiet --disable-compression "$image" "oci-archive:$CACHE/$name.tar.tmp:$image"
  mv "$CACHE/$name.tar.tmp" "$CACHE/$name.tar"
  echo "$id" > "$CACHE/$name.id"
  echo "    wrote $CACHE/$name.tar"
}

echo "==> localhost/reverie/pause:1"
work="$(mktemp -d)"
gcc -Os -Wall -Werror -static -o "$work/pause" hack/node/pause.c
strip "$work/pause"
if ! have localhost/reverie/pause:1 || ! cmp -s "$work/pause" "$CACHE/pause.bin"; then
  ctr="$(buildah from scratch)"
  buildah copy "$ctr" "$work/pause" /pause > /dev/null
  buildah config --entrypoint '["/pause"]' --user 65535:65535 "$ctr"
  buildah commit --quiet --rm "$ctr" localhost/reverie/pause:1 > /dev/null
  cp "$work/pause" "$CACHE/pause.bin"
fi
rm -rf "$work"
export_archive localhost/reverie/pause:1 pause

for image in operator trainer; do
  echo "==> localhost/reverie/$image:node (images/$image/Dockerfile on $BASE)"
  args=(--build-arg "BASE=$BASE")
  [[ $image == trainer ]] && args+=(--build-arg PYTHON=python3.11)
  buildah bud --quiet --layers --format docker "${args[@]}" -f "images/$image/Dockerfile" -t "localhost/reverie/$image:node" . > /dev/null
  export_archive "localhost/reverie/$image:node" "$image"
done
# Layers no tag points at any more (earlier builds of the code layer).
buildah rmi --prune > /dev/null 2>&1 || true
