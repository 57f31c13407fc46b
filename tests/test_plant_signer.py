"""The factory-data signing service: SoftHSM2 key, real TLS with client certificates, SQLite.

One token per test session (SoftHSM2 reads its configuration once per process); each test
makes its own key on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from agent.demo.signer import Identity, PlantPki, RunningSigner, running_signer
from agent.errors import FailureCode, UnitFailure
from agent.firmware import factory_data
from agent.firmware.crypto import verify_signature
from agent.station.signing import SignerClient, client_tls
from agent.wire.messages import Job
from agent.wire.signing import SignRequest

JOB = Job.model_validate_json(json.dumps({
    "job_id": "job-1", "station": "station-1", "product": "sensor-node", "set_id": "set-1",
    "serials": {"prefix": "SN-", "first": 1000, "last": 1009, "width": 6}, "quantity": 3}))


@pytest.fixture
def pki(tmp_path: Path) -> PlantPki:
    return PlantPki.create(tmp_path / "pki")


@pytest.fixture
async def signer(softhsm_token: None, tmp_path: Path,
                 pki: PlantPki) -> AsyncIterator[RunningSigner]:
    async with running_signer(tmp_path, pki=pki, jobs={JOB.job_id: JOB}.get,
                              rework_allowance=1) as running:
        yield running


def client(signer: RunningSigner, identity: Identity) -> SignerClient:
    return SignerClient(url=signer.url, timeout_s=5,
                        tls=client_tls(ca=signer.plant_ca, cert=identity.cert, key=identity.key))


@pytest.fixture
async def station(signer: RunningSigner, pki: PlantPki,
                  tmp_path: Path) -> AsyncIterator[SignerClient]:
    c = client(signer, pki.station(tmp_path / "station", "station-1"))
    yield c
    await c.aclose()


def request(serial: str = "SN-001000", chip: str = "00112233aabbccdd",
            digest: str = "ab" * 32) -> SignRequest:
    return SignRequest(job_id=JOB.job_id, product=JOB.product, serial=serial, chip_uid=chip,
                       digest=digest)


async def refusal(station: SignerClient, req: SignRequest) -> UnitFailure:
    with pytest.raises(UnitFailure) as caught:
        await station.sign(req, stage="sign")
    return caught.value


async def test_a_signature_verifies_against_the_token_key(
        signer: RunningSigner, station: SignerClient) -> None:
    data = b"FAFD factory data of one unit"
    answer = await station.sign(request(digest=hashlib.sha256(data).hexdigest()), stage="sign")
    assert answer.key_ref == signer.key_ref
    assert answer.key_ref.startswith("pkcs11:token=plant-signer;object=factory-data")
    assert verify_signature(answer.alg, signer.public_key, hashlib.sha256(data).digest(),
                            bytes.fromhex(answer.signature))
    assert not verify_signature(answer.alg, signer.public_key, hashlib.sha256(b"x").digest(),
                                bytes.fromhex(answer.signature))
    trail = await signer.service._store.audit(serial="SN-001000")
    assert [(row.decision, row.signature_id) for row in trail] == [
        ("signed", answer.signature_id)]


async def test_an_identical_request_gets_the_same_signature_and_one_quota_slot(
        signer: RunningSigner, station: SignerClient) -> None:
    first = await station.sign(request(), stage="sign")
    again = await station.sign(request(), stage="sign")
    assert (again.signature, again.signature_id, again.repeated) == (
        first.signature, first.signature_id, True)
    quota = await signer.service.quota(JOB.job_id)
    assert quota is not None
    assert (quota.used, quota.limit) == (1, 4)


async def test_a_board_retried_under_a_new_serial_after_a_crash_is_one_unit_of_quota(
        signer: RunningSigner, station: SignerClient) -> None:
    # signed, then the station died before writing; after the restart its serial stays
    # consumed and the same board gets the next serial
    await station.sign(request(serial="SN-001000"), stage="sign")
    await station.sign(request(serial="SN-001001", digest="cd" * 32), stage="sign")
    quota = await signer.service.quota(JOB.job_id)
    assert quota is not None
    assert quota.used == 1


async def test_refusals_carry_their_codes_and_are_audited(
        signer: RunningSigner, station: SignerClient) -> None:
    outside = await refusal(station, request(serial="SN-002000"))
    assert outside.code == FailureCode.SIGNING_REFUSED
    assert outside.detail.startswith("serial_outside_job:")

    await station.sign(request(serial="SN-001000", chip="01" * 8), stage="sign")
    stolen = await refusal(station, request(serial="SN-001000", chip="02" * 8))
    assert stolen.detail.startswith("serial_bound_to_other_chip:")

    for number, chip in ((1001, "03"), (1002, "04"), (1003, "05")):  # 3 ordered + 1 rework
        await station.sign(request(serial=f"SN-00{number}", chip=chip * 8), stage="sign")
    over = await refusal(station, request(serial="SN-001004", chip="06" * 8))
    assert over.detail.startswith("quota_exhausted:")
    unknown = await refusal(station, request().model_copy(update={"job_id": "job-9"}))
    assert unknown.detail.startswith("unknown_job:")

    codes = [row.code for row in await signer.service._store.audit() if row.code]
    assert codes == ["serial_outside_job", "serial_bound_to_other_chip", "quota_exhausted",
                     "unknown_job"]


async def test_another_station_may_not_sign_for_the_job(
        signer: RunningSigner, pki: PlantPki, tmp_path: Path) -> None:
    other = client(signer, pki.station(tmp_path / "other", "station-2"))
    try:
        failure = await refusal(other, request())
    finally:
        await other.aclose()
    assert failure.detail.startswith("station_not_allowed:")


async def test_a_certificate_from_another_authority_never_reaches_the_service(
        signer: RunningSigner, tmp_path: Path) -> None:
    stranger_pki = PlantPki.create(tmp_path / "stranger")
    stranger = client(signer, stranger_pki.station(tmp_path / "s", "station-1"))
    try:
        failure = await refusal(stranger, request())
    finally:
        await stranger.aclose()
    assert failure.code == FailureCode.SIGNER_UNREACHABLE
    assert await signer.service._store.audit() == []


async def test_a_service_that_is_not_there_is_unreachable_not_refused(
        pki: PlantPki, tmp_path: Path) -> None:
    identity = pki.station(tmp_path / "station", "station-1")
    gone = SignerClient(url="https://127.0.0.1:9", timeout_s=2,
                        tls=client_tls(ca=pki.plant_ca, cert=identity.cert, key=identity.key))
    try:
        failure = await refusal(gone, request())
    finally:
        await gone.aclose()
    assert failure.code == FailureCode.SIGNER_UNREACHABLE


def test_factory_data_is_deterministic_and_its_signature_block_decodes() -> None:
    layout_json = {"address": 4096, "size": 256, "signing": "required", "fields": [
        {"tag": 1, "name": "serial", "source": "serial", "type": "text", "size": 16},
        {"tag": 2, "name": "chip_uid", "source": "chip_uid", "type": "hex", "size": 8},
        {"tag": 3, "name": "mac", "source": "pool", "type": "hex", "size": 6,
         "pool_first": 0xF4CE36000000, "pool_count": 100000},
        {"tag": 9, "name": "adc_gain", "source": "calibration", "type": "u32", "size": 4,
         "default": 1000}]}
    from agent.wire.factory_layout import ManufacturingSpec

    layout = ManufacturingSpec.model_validate_json(json.dumps(layout_json))
    values = factory_data.UnitValues(serial="SN-001000", serial_number=1000,
                                     chip_uid="00112233aabbccdd", station="s", slot="a",
                                     job="j", product="p", time=0)
    data = factory_data.encode(layout, values)
    assert data == factory_data.encode(layout, values)
    signature = factory_data.Signature(alg="ed25519", signature=bytes(range(64)),
                                       key_ref="pkcs11:token=t;object=k", signature_id="f" * 32)
    blob = factory_data.partition(size=256, data=data, signature=signature)
    decoded = factory_data.decode(blob)
    assert decoded.problems == []
    assert decoded.data == data
    assert decoded.signature == signature
    assert decoded.entries[3] == bytes.fromhex("f4ce360003e8")
    assert int.from_bytes(decoded.entries[9], "little") == 1000
    corrupted = bytearray(blob)
    corrupted[10] ^= 1
    assert factory_data.decode(bytes(corrupted)).problems == [
        "CRC-32 of the factory data does not match"]


async def test_a_revoked_station_is_refused_when_the_service_reads_the_crl(
        softhsm_token: None, tmp_path: Path, pki: PlantPki) -> None:
    from cryptography import x509

    from agent.plant.pki import Revoked

    revoked = pki.station(tmp_path / "revoked", "station-1")
    serial = x509.load_pem_x509_certificate(revoked.cert.read_bytes()).serial_number
    now = datetime.now(UTC)
    crl = pki.station_ca.crl([Revoked(serial=serial, revoked_at=now)], number=1, now=now, days=1)
    (tmp_path / "station-ca.crl.pem").write_bytes(crl.public_bytes(Encoding.PEM))
    async with running_signer(tmp_path, pki=pki, jobs={JOB.job_id: JOB}.get,
                              client_crl=tmp_path / "station-ca.crl.pem") as running:
        refused, allowed = (client(running, revoked),
                            client(running, pki.station(tmp_path / "good", "station-1")))
        try:
            failure = await refusal(refused, request())
            answer = await allowed.sign(request(), stage="sign")
        finally:
            await refused.aclose()
            await allowed.aclose()
    assert failure.code == FailureCode.SIGNER_UNREACHABLE
    assert answer.key_ref == running.key_ref


async def test_a_plant_name_is_no_station_even_from_the_station_ca(
        signer: RunningSigner, pki: PlantPki, tmp_path: Path) -> None:
    impostor = client(signer, pki.station(tmp_path / "impostor", "plant-recorder"))
    try:
        failure = await refusal(impostor, request())
    finally:
        await impostor.aclose()
    assert failure.detail.startswith("not_a_station:")
    # refused at the door, before a request is read: the trail holds units, this is none
    assert await signer.service.store.audit() == []
