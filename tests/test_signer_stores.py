"""The signing service's decisions on both stores: SQLite and PostgreSQL give the same answers.

Each run goes through the service (SoftHSM2 key) and reads the audit trail back; PostgreSQL is
a private cluster, each test in a database of its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.demo.signer import PlantPki, running_signer
from agent.plant.signer import Refused
from agent.wire.messages import Job
from agent.wire.signing import SignRequest

JOB = Job.model_validate_json(json.dumps({
    "job_id": "wo-s", "product": "sensor-node", "set_id": "set-1",
    "serials": {"prefix": "SN-", "first": 1, "last": 9, "width": 6}, "quantity": 1}))


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "signer.db")
    url: str = request.getfixturevalue("pg_url")  # a fresh database on the suite's cluster
    return url


def ask(serial: str, chip: str, digest: str = "aa" * 32) -> SignRequest:
    return SignRequest(job_id="wo-s", product="sensor-node", serial=serial, chip_uid=chip,
                       digest=digest)


async def test_decisions_and_the_trail_are_the_same_on_every_store(
        softhsm_token: None, tmp_path: Path, db: str) -> None:
    pki = PlantPki.create(tmp_path / "pki")
    async with running_signer(tmp_path, pki=pki, jobs={JOB.job_id: JOB}.get, db=db) as running:
        service = running.service
        first = await service.sign(ask("SN-000001", "01" * 8), station="line-1")
        again = await service.sign(ask("SN-000001", "01" * 8), station="line-1")
        retried = await service.sign(ask("SN-000002", "01" * 8, "bb" * 32), station="line-1")
        codes = []
        for request in (ask("SN-000001", "02" * 8), ask("SN-000003", "03" * 8),
                        ask("SN-000099", "04" * 8)):
            with pytest.raises(Refused) as refused:
                await service.sign(request, station="line-1")
            codes.append(refused.value.code)
        quota = await service.quota("wo-s")
        trail = await service.store.audit(serial="SN-000001")
        by_key = await service.store.audit(key_ref=running.key_ref)
    assert (again.signature_id, again.repeated) == (first.signature_id, True)
    assert retried.signature_id != first.signature_id
    assert codes == ["serial_bound_to_other_chip", "quota_exhausted", "serial_outside_job"]
    assert quota is not None
    assert quota.used == 1
    assert [(row.decision, row.code) for row in trail] == [
        ("signed", None), ("repeated", None), ("refused", "serial_bound_to_other_chip")]
    assert [row.signature_id for row in by_key] == [
        first.signature_id, first.signature_id, retried.signature_id]
