"""The station's side of signed factory data, on the virtual nRF52840 with a real signer.

SoftHSM2 token, mutual TLS on loopback, mosquitto; the partition is read back from the part.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.config import StationConfig, parse_config
from agent.demo.images import DEVICE_CERTIFICATE, MANUFACTURING, signed_factory_data
from agent.demo.signer import Identity, PlantPki, RunningSigner, running_signer
from agent.firmware import device_key, factory_data
from agent.firmware.crypto import verify_signature
from agent.sim.broker import LocalBroker
from agent.sim.nrf52840.boards import read_board_memory
from agent.station.signing import SignerClient, client_tls
from agent.wire.messages import Job, UnitRecord
from agent.wire.signing import SignRequest, SignResponse
from agent.wire.topics import StationTopics
from tests.helpers import (
    eventually,
    job_payload,
    publish,
    publish_job,
    running_station,
    signed_set,
    station_raw,
)

STATION = "st-test"


@pytest.fixture
def pki(tmp_path: Path) -> PlantPki:
    return PlantPki.create(tmp_path / "pki")


@pytest.fixture
def identity(pki: PlantPki, tmp_path: Path) -> Identity:
    return pki.station(tmp_path / "station-tls", STATION)


@pytest.fixture
async def signer(softhsm_token: None, tmp_path: Path,
                 pki: PlantPki) -> AsyncIterator[tuple[RunningSigner, dict[str, Job]]]:
    jobs: dict[str, Job] = {}
    async with running_signer(tmp_path / "signer", pki=pki, jobs=jobs.get) as running:
        yield running, jobs


async def run_units(tmp_path: Path, port: int, *, url: str, ca: Path, identity: Identity,
                    units: int, jobs: dict[str, Job] | None,
                    device_certificate: bool = False) -> tuple[list[UnitRecord], Any]:
    raw = station_raw(tmp_path, port) | {"signer": {
        "url": url, "ca": str(ca), "cert": str(identity.cert), "key": str(identity.key),
        "timeout_s": 3}}
    config = parse_config(raw, source="test", base=tmp_path)
    job = job_payload(job_id="wo-sign", station=STATION, units=units)
    if jobs is not None:
        jobs[job["job_id"]] = Job.model_validate_json(json.dumps(job))
    async with running_station(config) as (parts, sim):
        await eventually(parts.link.connected.is_set, what="station link")
        topics = StationTopics(STATION)
        await publish(port, topics.firmware_set, signed_set(
            tmp_path, manufacturing=signed_factory_data(
                MANUFACTURING, device_certificate=device_certificate)))
        await publish_job(port, STATION, job)
        await eventually(lambda: parts.status.accepting_units, timeout=120,
                         what="the station taking boards")
        records: list[UnitRecord] = []
        parts.station.record_listeners.append(records.append)
        await sim.operator.run(units)
        bay = sim.bays["a"]
        partition = read_board_memory(bay.board_dir, bay.probe_uid, MANUFACTURING["address"],
                                      MANUFACTURING["size"])
        return records, (parts.status.snapshot(), partition)


async def test_every_unit_carries_a_partition_signed_by_the_plant_key(
        tmp_path: Path, broker: LocalBroker, signer: tuple[RunningSigner, dict[str, Job]],
        identity: Identity) -> None:
    running, jobs = signer
    records, (status, partition) = await run_units(
        tmp_path, broker.port, url=running.url, ca=running.plant_ca, identity=identity,
        units=2, jobs=jobs)
    assert [r.outcome for r in records] == ["pass", "pass"]
    decoded = factory_data.decode(partition)
    assert decoded.problems == []
    assert decoded.signature is not None
    assert verify_signature(decoded.signature.alg, running.public_key, decoded.digest,
                            decoded.signature.signature)
    manufacturing = records[-1].images[-1]
    assert manufacturing.role == "manufacturing"
    assert manufacturing.verified
    assert manufacturing.key_ref == running.key_ref == decoded.signature.key_ref
    assert manufacturing.signature_id == decoded.signature.signature_id
    assert decoded.entries[1].decode() == records[-1].serial
    assert "sign" in [stage.stage for stage in records[-1].stages]
    assert status.signing_error is None
    quota = await running.service.quota("wo-sign")
    assert quota is not None
    assert quota.used == 2
    _no_private_key_but_the_stations_own(tmp_path, identity, running)


@pytest.mark.parametrize("case", ["refused", "unreachable"])
async def test_no_signature_means_nothing_written_and_the_status_says_why(
        tmp_path: Path, broker: LocalBroker, signer: tuple[RunningSigner, dict[str, Job]],
        identity: Identity, case: str) -> None:
    running, jobs = signer
    url = running.url if case == "refused" else "https://127.0.0.1:9"
    # refused: the signing service was never told about this job
    records, (status, partition) = await run_units(
        tmp_path, broker.port, url=url, ca=running.plant_ca, identity=identity, units=1,
        jobs=None)
    (record,) = records
    assert record.outcome == "fail"
    assert record.failure is not None
    code = "signing_refused" if case == "refused" else "signer_unreachable"
    assert (record.failure.code, record.failure.stage) == (code, "sign")
    assert partition == b"\xff" * MANUFACTURING["size"]  # nothing unsigned, nothing at all
    assert not record.valid_flag_set
    assert status.signing_error is not None
    assert ("unknown_job" if case == "refused" else "unreachable") in status.signing_error
    assert jobs == {}


def _no_private_key_but_the_stations_own(tmp_path: Path, identity: Identity,
                                         running: RunningSigner) -> None:
    """The station's storage (state dir, configuration folder) holds no signing key: the only
    private key in it is its TLS key, which is not the plant's signing key."""
    found = []
    for folder in (tmp_path / "station", identity.key.parent):
        for path in folder.rglob("*"):
            if not path.is_file():
                continue
            content = path.read_bytes()
            if b"PRIVATE KEY" in content or bytes.fromhex("302e020100300506032b6570") in content:
                found.append(path)
    assert found == [identity.key]
    key = serialization.load_pem_private_key(identity.key.read_bytes(), None)
    assert key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != running.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


async def test_a_part_with_its_own_key_gets_a_certificate_chained_to_the_plant_root(
        tmp_path: Path, broker: LocalBroker, signer: tuple[RunningSigner, dict[str, Job]],
        identity: Identity) -> None:
    running, jobs = signer
    records, (_, _) = await run_units(
        tmp_path, broker.port, url=running.url, ca=running.plant_ca, identity=identity,
        units=1, jobs=jobs, device_certificate=True)
    (record,) = records
    assert record.outcome == "pass", record.failure
    assert record.device_certificate is not None
    region = read_board_memory(tmp_path / "boards", f"{STATION}-a",
                               DEVICE_CERTIFICATE["cert_address"], 1024)
    der = device_key.parse_cert_region(region)
    cert = x509.load_der_x509_certificate(der)
    assert f"{cert.serial_number:x}" == record.device_certificate.serial
    assert cert.issuer.rfc4514_string() == record.device_certificate.issuer
    part_key = device_key.parse_key_record(read_board_memory(
        tmp_path / "boards", f"{STATION}-a", DEVICE_CERTIFICATE["key_address"], 128))
    assert cert.public_key().public_bytes(Encoding.X962,
                                          PublicFormat.UncompressedPoint) == part_key
    files = {"root.pem": running.device_root, "intermediate.pem": running.device_intermediate,
             "device.pem": cert}
    for name, c in files.items():
        (tmp_path / name).write_bytes(c.public_bytes(Encoding.PEM))
    verified = openssl_verify(tmp_path, "-CAfile", "root.pem", "-untrusted", "intermediate.pem")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # the intermediate is no trust anchor: without the root the chain does not verify
    assert openssl_verify(tmp_path, "-CAfile", "intermediate.pem").returncode != 0


def openssl_verify(folder: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "verify", *options, "device.pem"], cwd=folder,
                          capture_output=True, text=True, check=False, timeout=30)


async def test_a_station_killed_between_signing_and_writing_costs_one_quota_slot(
        tmp_path: Path, broker: LocalBroker, signer: tuple[RunningSigner, dict[str, Job]],
        identity: Identity, monkeypatch: pytest.MonkeyPatch) -> None:
    running, jobs = signer
    raw = station_raw(tmp_path, broker.port) | {"signer": {
        "url": running.url, "ca": str(running.plant_ca), "cert": str(identity.cert),
        "key": str(identity.key)}}
    config = parse_config(raw, source="test", base=tmp_path)
    job = job_payload(job_id="wo-kill", station=STATION, units=1)
    jobs[job["job_id"]] = Job.model_validate_json(json.dumps(job))
    answered = asyncio.Event()

    class DiesAfterTheAnswer(SignerClient):
        async def sign(self, request: SignRequest, *, stage: str = "sign") -> SignResponse:
            answer = await super().sign(request, stage=stage)
            answered.set()
            await asyncio.Event().wait()  # the station dies here, before writing anything
            return answer

    def dying_client(cfg: StationConfig) -> SignerClient:
        return DiesAfterTheAnswer(url=running.url, timeout_s=5, tls=client_tls(
            ca=running.plant_ca, cert=identity.cert, key=identity.key))

    with monkeypatch.context() as patch:
        patch.setattr(SignerClient, "from_config", dying_client)
        async with running_station(config) as (parts, sim):
            await eventually(parts.link.connected.is_set, what="station link")
            await publish(broker.port, StationTopics(STATION).firmware_set, signed_set(
                tmp_path, manufacturing=signed_factory_data(MANUFACTURING)))
            await publish_job(broker.port, STATION, job)
            await eventually(lambda: parts.status.accepting_units, timeout=120,
                             what="the station taking boards")
            chip = sim.bays["a"].place_new_board()
            sim.operator.close_lid()
            await asyncio.wait_for(answered.wait(), 60)
    # the same board, after the restart: its first serial stays consumed, it gets the next
    async with running_station(config) as (parts, sim):
        records: list[UnitRecord] = []
        parts.station.record_listeners.append(records.append)
        await eventually(lambda: parts.status.accepting_units, timeout=120,
                         what="the restarted station taking boards")
        sim.operator.open_lid()
        assert await sim.operator.cycle_one(place=False) == "pass"
    assert [(r.serial, r.chip_uid, r.outcome) for r in records][-1] == ("SN-001001", chip, "pass")
    trail = [(row.serial, row.chip_uid, row.decision)
             for row in await running.service.store.audit()]
    assert trail == [("SN-001000", chip, "signed"), ("SN-001001", chip, "signed")]
    quota = await running.service.quota("wo-kill")
    assert quota is not None
    assert quota.used == 1
