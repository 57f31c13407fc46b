"""Drop a client that is still connected with a certificate revoked after it connected.

mosquitto checks the CRL during the TLS handshake only. A reload (SIGHUP) re-reads the CRL and
the ACLs but leaves connected clients on: ``mosquitto_security_apply_default`` (2.0) takes each
client's username from its certificate again and never re-verifies the chain. Restarting the
broker drops every client. This drops one: with ``use_username_as_clientid`` a connection whose
certificate carries the same name gets the same client id, and the broker closes the older
connection (MQTT v5 reason 0x8E, session taken over). So we connect once with a ten-minute
certificate for that name, with a clean start and no session expiry (the revoked client's session
and the messages queued for it go too), and leave. The revoked client's reconnects then fail the
handshake. The certificate's key lives in a private temporary folder removed at once; the
certificate is in the inventory (use ``takeover``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import tempfile
from pathlib import Path

from agent.plant.pki import PkiError, cert_pem, key_pem, kind_of
from agent.plant.pki_store import PkiFolder, write_new
from agent.wire.mqtt import BrokerEndpoint, make_client

TAKEOVER_MINUTES = 10


async def disconnect(endpoint: BrokerEndpoint, *, pki: PkiFolder, name: str,
                     now: dt.datetime) -> None:
    """Take over ``name``'s client id on ``endpoint`` and leave; PkiError if it is not revoked.

    ``endpoint`` is the listener ``name`` uses (stations' or the plant's), with the CA that
    verifies the broker; its own certificate, if any, is not used.
    """
    live = [r for r in pki.inventory().certificates(kind_of(name))
            if r.name == name and r.use != "takeover" and r.revoked_at is None
            and r.not_after > now]
    if live:
        raise PkiError(f"{name} still holds an unrevoked certificate (serial {live[0].serial}): "
                       "revoke it first, or the client simply connects again")
    cert, key = pki.issue_takeover(name, kind=kind_of(name), minutes=TAKEOVER_MINUTES, now=now)
    with tempfile.TemporaryDirectory(prefix="fixture-agent-takeover-") as folder:
        cert_path, key_path = Path(folder) / "client.pem", Path(folder) / "client.key"
        write_new(cert_path, cert_pem(cert), mode=0o600)
        write_new(key_path, key_pem(key), mode=0o600)
        takeover = dataclasses.replace(endpoint, cert=cert_path, key=key_path)
        async with make_client(takeover, client_id=name):
            pass  # connected: the broker has closed the other connection with this client id
