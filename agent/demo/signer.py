"""The demo's plant signing service: a SoftHSM2 token, a key on it, the two CAs, HTTPS.

Everything lives in the run's workdir (``signer/``): the token folder and its configuration,
the station CA and plant CA, the service's and the station's certificates, the audit database.
The station gets only its own certificate and the plant CA; the signing key never leaves the
token. Tests use the same pieces.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from agent.firmware.crypto import PublicKey
from agent.plant.certify import Certifier
from agent.plant.device_ca import DeviceIntermediate, intermediate_certificate
from agent.plant.device_ca import device_root as make_device_root
from agent.plant.pki import Authority, cert_pem, key_pem, new_key
from agent.plant.signer import JobLookup, SigningService
from agent.plant.signer_http import server_tls, serving
from agent.plant.signer_keys import open_key
from agent.plant.signer_store_pg import open_signer_store

MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
           "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so")
TOKEN, PIN, KEY_LABEL = "plant-signer", "1234", "factory-data"


def softhsm_module() -> Path:
    """The SoftHSM2 PKCS#11 library of this machine."""
    return next((Path(p) for p in MODULES if Path(p).exists()), Path(MODULES[0]))


def init_token(folder: Path) -> None:
    """A SoftHSM2 configuration of its own (``SOFTHSM2_CONF``, set for this process before the
    library loads) with one initialised token."""
    tokens = folder / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = folder / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", TOKEN, "--pin", PIN,
                    "--so-pin", "5678"], check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Identity:
    """A certificate and its key, as files."""

    cert: Path
    key: Path


def write_identity(folder: Path, name: str, authority: Authority, *, server: bool,
                   now: dt.datetime) -> Identity:
    """Issue ``name`` a client (or, for 127.0.0.1, server) certificate into ``folder``."""
    key = new_key()
    later = now + dt.timedelta(days=30)
    cert = (authority.issue_server(dns=["localhost"], ips=["127.0.0.1"], key=key.public_key(),
                                   not_after=later, now=now) if server
            else authority.issue_client(name, key.public_key(), not_after=later, now=now))
    identity = Identity(folder / f"{name}.pem", folder / f"{name}.key")
    identity.cert.write_bytes(cert_pem(cert))
    identity.key.write_bytes(key_pem(key))
    identity.key.chmod(0o600)
    return identity


@dataclass(frozen=True)
class PlantPki:
    """The two authorities and the service's own certificate."""

    station_ca: Authority
    plant_ca: Path
    station_ca_file: Path
    server: Identity
    device_root: Authority  # offline in a real plant; it signs the device intermediate only

    @classmethod
    def create(cls, folder: Path) -> PlantPki:
        """New CAs in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC)
        station_ca = Authority.create("station CA", days=30, now=now)
        plant_ca = Authority.create("plant CA", days=30, now=now)
        (folder / "station-ca.pem").write_bytes(cert_pem(station_ca.cert))
        (folder / "plant-ca.pem").write_bytes(cert_pem(plant_ca.cert))
        server = write_identity(folder, "plant-signer", plant_ca, server=True, now=now)
        device_root = make_device_root("plant device root", days=30, now=now)
        (folder / "device-root.pem").write_bytes(cert_pem(device_root.cert))
        return cls(station_ca=station_ca, plant_ca=folder / "plant-ca.pem",
                   station_ca_file=folder / "station-ca.pem", server=server,
                   device_root=device_root)

    def station(self, folder: Path, station_id: str) -> Identity:
        """A station's client certificate from the station CA."""
        folder.mkdir(parents=True, exist_ok=True)
        return write_identity(folder, station_id, self.station_ca, server=False,
                              now=dt.datetime.now(dt.UTC))


@dataclass(frozen=True)
class RunningSigner:
    """What a station (and a checker) needs to know about the running service."""

    url: str
    plant_ca: Path
    key_ref: str
    public_key: PublicKey
    service: SigningService
    device_root: x509.Certificate
    device_intermediate: x509.Certificate


@contextlib.asynccontextmanager
async def running_signer(folder: Path, *, pki: PlantPki, jobs: JobLookup,
                         rework_allowance: int = 0, alg: str = "ed25519",
                         key_label: str | None = None, client_crl: Path | None = None,
                         db: str | None = None) -> AsyncIterator[RunningSigner]:
    """A key on the (already initialised) token, the store, the HTTPS service on a free port.

    Without ``key_label`` the key gets a label of its own (tests share one token); ``db`` is
    a SQLite file or a ``postgresql://`` URL (default: ``signer.db`` in ``folder``)."""
    from agent.plant.pkcs11_signer import generate_on_token  # python-pkcs11: plant extra

    module = softhsm_module()
    label = key_label or f"{KEY_LABEL}-{os.urandom(4).hex()}"
    ca_label = "device-intermediate" if key_label is not None \
        else f"device-intermediate-{label.rpartition('-')[2]}"

    def token_keys() -> tuple[Any, str, Any, str]:
        generate_on_token(module=module, token_label=TOKEN, key_label=label, pin=PIN,
                          alg="ecdsa-p256" if alg == "ecdsa-p256" else "ed25519")
        generate_on_token(module=module, token_label=TOKEN, key_label=ca_label, pin=PIN,
                          alg="ecdsa-p256")
        key, ref = open_key(module=module, token_label=TOKEN, key_label=label, pin=PIN)
        ca_key, ca_ref = open_key(module=module, token_label=TOKEN, key_label=ca_label, pin=PIN)
        return key, ref, ca_key, ca_ref

    key, ref, ca_key, ca_ref = await asyncio.to_thread(token_keys)  # the token is slow I/O
    now = dt.datetime.now(dt.UTC)
    intermediate = intermediate_certificate(pki.device_root, ca_key.public_key(),
                                            name="plant device intermediate", days=30, now=now)
    store = await open_signer_store(db or str(folder / "signer.db"))
    service = SigningService(store=store, jobs=jobs, key=key, key_ref=ref,
                             rework_allowance=rework_allowance)
    certifier = Certifier(service=service, ca=DeviceIntermediate(
        cert=intermediate, key=ca_key, key_ref=ca_ref))
    tls = server_tls(cert=pki.server.cert, key=pki.server.key, client_ca=pki.station_ca_file,
                     client_crl=client_crl)
    try:
        async with serving(service, host="127.0.0.1", port=0, tls=tls,
                           certifier=certifier) as port:
            yield RunningSigner(url=f"https://127.0.0.1:{port}", plant_ca=pki.plant_ca,
                                key_ref=ref, public_key=key.public_key(), service=service,
                                device_root=pki.device_root.cert,
                                device_intermediate=intermediate)
    finally:
        service.close()
        await store.close()
        key.__exit__(None, None, None)
        ca_key.__exit__(None, None, None)
