"""The operator's settings from its environment."""

from __future__ import annotations

import pytest

from reverie.controller.options import port_from_env


def test_a_service_link_variable_is_not_taken_for_the_operators_port(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kubelet sets <SERVICE>_PORT=tcp://IP:PORT for each Service; a release named "reverie" has reverie-webhook.
    monkeypatch.setenv("REVERIE_WEBHOOK_PORT", "tcp://10.0.0.48:443")
    assert port_from_env("REVERIE_WEBHOOK_PORT") is None
    monkeypatch.setenv("REVERIE_WEBHOOK_PORT", "9443")
    assert port_from_env("REVERIE_WEBHOOK_PORT") == 9443
    monkeypatch.setenv("REVERIE_WEBHOOK_PORT", "nine")
    with pytest.raises(ValueError, match="REVERIE_WEBHOOK_PORT='nine' is not a port number"):
        port_from_env("REVERIE_WEBHOOK_PORT")
