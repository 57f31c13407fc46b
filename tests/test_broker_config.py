"""The shipped broker configuration keeps its promises even as it is edited.

Every listener is TLS with a client certificate whose CN is the username and the client id, with
a CRL, its own ACL and no anonymous access; nothing else listens or authenticates (a second
listener, a password file, websockets or an include would be a way around certificate identity).
"""

from __future__ import annotations

import re

from agent.plant.pki import PLANT_ROLES
from tests.secure_broker import SHIPPED, TLS_DIR

PER_LISTENER = {"certfile", "keyfile", "cafile", "crlfile", "tls_version", "require_certificate",
                "use_identity_as_username", "use_username_as_clientid", "allow_anonymous",
                "allow_zero_length_clientid", "acl_file"}


def listeners() -> dict[str, dict[str, str]]:
    """Each listener's settings, by port; everything else under "global"."""
    sections: dict[str, dict[str, str]] = {"global": {}}
    current = sections["global"]
    for line in (SHIPPED / "mosquitto.conf").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if key == "listener":
            current = sections.setdefault(value, {})
            continue
        section = current if key in PER_LISTENER else sections["global"]
        assert key not in section or key == "log_type", f"{key} given twice"
        section[key] = value
    return sections


def test_every_listener_requires_a_certificate_identity() -> None:
    sections = listeners()
    assert set(sections) == {"global", "8883", "8884"}
    for port in ("8883", "8884"):
        settings = sections[port]
        assert set(settings) == PER_LISTENER, port
        assert settings["require_certificate"] == "true"
        assert settings["use_identity_as_username"] == "true"
        assert settings["use_username_as_clientid"] == "true"
        assert settings["allow_anonymous"] == "false"
        assert all(settings[k].startswith(TLS_DIR) for k in
                   ("certfile", "keyfile", "cafile", "crlfile", "acl_file"))
    assert sections["8883"]["cafile"].endswith("station-ca.pem")
    assert sections["8884"]["cafile"].endswith("plant-ca.pem")


def test_nothing_else_listens_or_authenticates() -> None:
    general = listeners()["global"]
    assert general["per_listener_settings"] == "true"
    forbidden = {"include_dir", "password_file", "psk_file", "plugin", "auth_plugin", "protocol",
                 "port", "bind_address", "allow_anonymous", "acl_file", "clientid_prefixes"}
    assert forbidden.isdisjoint(general)
    assert {"max_packet_size", "max_queued_messages", "max_queued_bytes",
            "max_inflight_messages", "persistence", "persistence_location"} <= set(general)


def test_every_plant_role_has_a_block_in_the_plant_acl() -> None:
    users = re.findall(r"^user (\S+)$", (SHIPPED / "acl-plant").read_text(), re.M)
    assert {re.sub(r"-[0-9]+$", "", user) for user in users} == {f"plant-{role}"
                                                                 for role in PLANT_ROLES}
    stations = (SHIPPED / "acl-stations").read_text()
    assert "\nuser " not in stations  # stations get rights by %u pattern only
