"""The shipped plant broker (config/mosquitto/) on loopback, with a PKI made by the product's tool.

Only what a test machine needs is changed in the shipped configuration: the listeners' ports
(free loopback ports instead of 8883 and 8884), the folders (this test's instead of
/etc/mosquitto/fixture-agent/ and /var/lib/mosquitto/) and the user to run as (a test's files
are not readable by user mosquitto). Everything else is the file as shipped.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from agent.plant.pki import Authority, cert_pem, key_pem, kind_of, new_key
from agent.plant.pki_store import PkiFolder
from agent.sim.broker import LocalBroker, free_port
from agent.wire.mqtt import BrokerEndpoint

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config" / "mosquitto"
STATION_PORT, PLANT_PORT = 8883, 8884
TLS_DIR, DATA_DIR = "/etc/mosquitto/fixture-agent/", "/var/lib/mosquitto/"


def shipped_config(*, station_port: int, plant_port: int, tls: Path, data: Path) -> str:
    """The shipped mosquitto.conf with only ports, folders and user changed."""
    text = (SHIPPED / "mosquitto.conf").read_text()
    changes = {f"listener {STATION_PORT}\n": f"listener {station_port} 127.0.0.1\n",
               f"listener {PLANT_PORT}\n": f"listener {plant_port} 127.0.0.1\n",
               TLS_DIR: f"{tls}/", DATA_DIR: f"{data}/",
               "user mosquitto\n": f"user {getpass.getuser()}\n"}
    for old, new in changes.items():
        assert old in text, f"the shipped mosquitto.conf no longer says {old!r}"
        text = text.replace(old, new)
    return text


class ShippedBroker(LocalBroker):
    """mosquitto running the shipped configuration (see the module's docstring)."""

    def __init__(self, workdir: Path, *, station_port: int | None = None,
                 plant_port: int | None = None) -> None:
        super().__init__(workdir, port=station_port or free_port())
        self.plant_port = plant_port or free_port()
        self.tls = workdir / "tls"

    def config_text(self) -> str:
        """The shipped file, ports and folders changed."""
        return shipped_config(station_port=self.port, plant_port=self.plant_port, tls=self.tls,
                              data=self.workdir)


@dataclass
class SecurePlant:
    """A PKI and the shipped broker trusting it; certificates issued on demand."""

    pki: PkiFolder
    broker: ShippedBroker
    ids: Path

    def endpoint(self, name: str, *, plant_listener: bool | None = None) -> BrokerEndpoint:
        """How ``name`` connects (its own certificate, issued the first time)."""
        cert = self.ids / f"{name}.pem"
        if not cert.exists():
            self.pki.issue_client(name, kind=kind_of(name), days=30, out=self.ids,
                                  now=dt.datetime.now(dt.UTC))
        return self.endpoint_with(cert, self.ids / f"{name}.key",
                                  plant=kind_of(name) == "plant" if plant_listener is None
                                  else plant_listener)

    def endpoint_with(self, cert: Path | None, key: Path | None, *,
                      plant: bool) -> BrokerEndpoint:
        """An endpoint presenting these files, on the plant's listener or the stations'."""
        return BrokerEndpoint(host="127.0.0.1",
                              port=self.broker.plant_port if plant else self.broker.port,
                              ca=self.pki.ca_cert_path("plant"), cert=cert, key=key,
                              keepalive_s=5)

    def forge(self, name: str, *, authority: Authority, not_after: dt.datetime | None = None,
              now: dt.datetime | None = None) -> tuple[Path, Path]:
        """A certificate for ``name`` from ``authority``, bypassing the tool's name rules."""
        now = now or dt.datetime.now(dt.UTC)
        key = new_key()
        cert = authority.issue_client(name, key.public_key(), now=now,
                                      not_after=not_after or now + dt.timedelta(days=1))
        self.ids.mkdir(parents=True, exist_ok=True)
        stem = self.ids / f"forged-{name}-{cert.serial_number:x}"
        stem.with_suffix(".pem").write_bytes(cert_pem(cert))
        stem.with_suffix(".key").write_bytes(key_pem(key))
        return stem.with_suffix(".pem"), stem.with_suffix(".key")

    def publish_crls(self) -> None:
        """Put the PKI's current CRLs where the broker reads them and reload it (SIGHUP)."""
        self.pki.publish(self.broker.tls)
        self.broker.reload()


def make_plant(workdir: Path) -> SecurePlant:
    """A PKI as the README makes it, and the broker's folder filled as docs/mqtt.md says."""
    pki = PkiFolder(workdir / "pki")
    now = dt.datetime.now(dt.UTC)
    pki.create(org="test", ca_days=30, crl_days=30, now=now)
    broker = ShippedBroker(workdir / "broker")
    pki.issue_server("broker", dns=["localhost"], ips=["127.0.0.1"], days=30, out=broker.tls,
                     now=now)
    pki.publish(broker.tls)
    for acl in ("acl-stations", "acl-plant"):
        shutil.copy(SHIPPED / acl, broker.tls / acl)
    return SecurePlant(pki=pki, broker=broker, ids=workdir / "ids")


@contextlib.asynccontextmanager
async def secure_plant(workdir: Path) -> AsyncIterator[SecurePlant]:
    """The shipped broker running on a fresh PKI, stopped afterwards."""
    plant = make_plant(workdir)
    await plant.broker.start()
    try:
        yield plant
    finally:
        await plant.broker.stop()
