"""The record database on both engines: idempotent storage, chain checks, queries, audit, backup."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from agent.plant.audit import audit
from agent.plant.backends import INSERT_QUARANTINE, Backend, open_backend
from agent.plant.records import Incoming, RecordStore
from agent.plant.trace import export, find, first_pass_yield, missing_sequences
from agent.sim.records import T0, chain
from agent.wire.messages import record_digest


@pytest.fixture
async def backend(db_target: str) -> AsyncIterator[Backend]:
    opened = await open_backend(db_target)
    yield opened
    await opened.close()


def incoming(station: str, payloads: list[bytes]) -> list[Incoming]:
    return [Incoming(station, p) for p in payloads]


async def count(backend: Backend) -> int:
    (row,) = await backend.fetch("SELECT COUNT(*) FROM records")
    return int(row[0])


async def test_a_record_delivered_twice_is_stored_once_and_acked_both_times(
        backend: Backend) -> None:
    store = RecordStore(backend)
    payloads = list(chain("st-1", 5))
    first = await store.store_batch(incoming("st-1", payloads))
    again = await store.store_batch(incoming("st-1", payloads[2:] + payloads[2:]))
    assert len(first["st-1"]) == 5
    assert len(again["st-1"]) == 6
    assert await count(backend) == 5
    assert store.inserted == 5
    assert store.link_errors == 0
    (found,) = await audit(backend)
    assert found.clean
    assert found.records == 5
    assert found.highest_seq == 5


async def test_a_transaction_is_all_or_nothing_and_reads_beside_it_see_only_committed_rows(
        backend: Backend) -> None:
    async def held() -> int:
        (row,) = await backend.fetch("SELECT COUNT(*) FROM quarantine")
        return int(row[0])

    beside: list[asyncio.Task[int]] = []

    async def change_mind() -> None:
        async with backend.transaction() as tx:
            await tx.execute(INSERT_QUARANTINE, ("a" * 32, "st-1", "test", b"{}"))
            assert await tx.fetch("SELECT COUNT(*) FROM quarantine") == [(1,)]
            beside.append(asyncio.create_task(held()))  # SQLite: the same connection, waiting
            await asyncio.sleep(0.1)
            raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError, match="changed my mind"):
        await change_mind()
    assert await beside[0] == 0
    async with backend.transaction() as tx:
        await tx.execute(INSERT_QUARANTINE, ("b" * 32, "st-1", "test", b"{}"))
        assert await tx.fetch("UPDATE quarantine SET reason = 'kept'") == []  # no rows to give
    assert await held() == 1


async def test_the_buyers_and_quality_questions(backend: Backend) -> None:
    store = RecordStore(backend)
    good = list(chain("st-1", 4, key_ref="hsm:good"))
    leaked = list(chain("st-2", 3, key_ref="hsm:leaked", job_id="wo-2", set_id="set-2"))
    retry = list(chain("st-1", 1, first_seq=5, serial="st-2-SN-0000001",
                       prev_digest=record_digest(good[-1])))
    await store.store_batch(incoming("st-1", good) + incoming("st-2", leaked))
    await store.store_batch(incoming("st-1", retry))
    keyed = await find(backend, "key", "hsm:leaked")
    assert [r["serial"] for r in keyed] == [f"st-2-SN-{n:07d}" for n in (1, 2, 3)]
    assert await find(backend, "key", "hsm:leaked", since=T0 + timedelta(seconds=2),
                      until=T0 + timedelta(seconds=3)) == [json.loads(leaked[1])]
    assert len(await find(backend, "serial", "st-2-SN-0000001")) == 2  # first try and retest
    assert await find(backend, "chip", json.loads(good[0])["chip_uid"]) == [json.loads(good[0])]
    assert len(await find(backend, "set", "set-2")) == 3
    assert len(await find(backend, "job", "wo-1")) == 5
    assert len(await find(backend, "manifest", "cd" * 32)) == 8
    assert await find(backend, "key", "hsm:nobody") == []
    # the retest of st-2's first unit is no first pass: 4 units on st-1 (its seq 5 is a retest)
    by_station = {y.group: (y.units, y.passed_first_time)
                  for y in await first_pass_yield(backend, "station")}
    assert by_station == {"st-1": (4, 4), "st-2": (3, 3)}
    exported = [r async for r in export(backend, until=T0 + timedelta(seconds=2, microseconds=1))]
    assert sorted(r["seq"] for r in exported) == [1, 1, 2, 2]


async def test_a_broken_link_is_reported_and_still_stored(backend: Backend) -> None:
    store = RecordStore(backend)
    payloads = list(chain("st-1", 3))
    forged = next(chain("st-1", 1, first_seq=4, prev_digest="ab" * 32))
    await store.store_batch(incoming("st-1", [*payloads, forged]))
    assert store.link_errors == 1
    assert await count(backend) == 4  # nothing dropped
    (found,) = await audit(backend)
    assert found.broken_links == [(4, json.loads(forged)["record_id"])]
    assert not found.clean


async def test_audit_names_an_altered_row_a_gap_and_a_duplicate_seq(backend: Backend) -> None:
    store = RecordStore(backend)
    payloads = list(chain("st-1", 6))
    twin = next(chain("st-1", 1, first_seq=2, prev_digest=record_digest(payloads[0])))
    kept = [p for i, p in enumerate(payloads) if i != 3]  # seq 4 never arrives
    await store.store_batch(incoming("st-1", [*kept, twin]))
    assert store.link_errors == 1  # the twin's seq, seen on arrival
    victim = json.loads(payloads[0])["record_id"]
    await backend.fetch("UPDATE records SET payload = replace(payload, '\"pass\"', '\"fail\"')"
                        " WHERE record_id = %s RETURNING record_id", (victim,))
    (found,) = await audit(backend, ["st-1"])
    assert found.altered == [(1, victim)]
    assert found.missing == [4]
    assert found.duplicates == [2]
    assert await missing_sequences(backend, "st-1") == [4]
    # a payload altered together with its digest still breaks the next record's link
    second = json.loads(payloads[1])["record_id"]
    await backend.fetch("UPDATE records SET payload = replace(payload, '\"pass\"', '\"fail\"'),"
                        " digest = %s WHERE record_id = %s RETURNING record_id",
                        ("00" * 32, second))
    (found,) = await audit(backend, ["st-1"])
    assert (3, json.loads(payloads[2])["record_id"]) in found.broken_links


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True,
                          timeout=120, check=False)


async def test_the_command_line_answers_on_both_engines(
        backend: Backend, db_target: str, tmp_path: Path) -> None:
    payloads = list(chain("st-1", 3, key_ref="hsm:leaked"))
    await RecordStore(backend).store_batch(incoming("st-1", payloads))
    serial = json.loads(payloads[0])["serial"]
    trace = run_cli("trace", serial, "--db", db_target, "--json")
    assert trace.returncode == 0, trace.stderr
    assert json.loads(trace.stdout)[0]["serial"] == serial
    keyed = run_cli("plant", "query", "--db", db_target, "--key", "hsm:leaked", "--json")
    assert [r["seq"] for r in json.loads(keyed.stdout)] == [1, 2, 3]
    clean = run_cli("plant", "audit", "--db", db_target, "--json")
    assert clean.returncode == 0
    assert json.loads(clean.stdout)[0]["clean"] is True
    exported = run_cli("plant", "query", "--db", db_target, "--export", "csv")
    assert exported.stdout.count("\n") == 4
    assert "hsm:leaked" in exported.stdout
    fpy = run_cli("plant", "query", "--db", db_target, "--yield-by", "job", "--json")
    assert json.loads(fpy.stdout) == [{"job": "wo-1", "units": 3, "passed_first_time": 3,
                                       "first_pass_yield_percent": 100.0}]
    record_id = json.loads(payloads[1])["record_id"]
    await backend.fetch("UPDATE records SET payload = replace(payload, 'hsm:leaked', 'hsm:other')"
                        " WHERE record_id = %s RETURNING record_id", (record_id,))
    tampered = run_cli("plant", "audit", "--db", db_target, "--station", "st-1")
    assert tampered.returncode == 1
    assert f"record {record_id} (seq 2) was altered" in tampered.stdout
    copy = tmp_path / "backup.db"
    backed = run_cli("plant", "backup", "--db", db_target, str(copy))
    assert backed.returncode == 0, backed.stderr
    assert copy.stat().st_size > 0
    missing = run_cli("plant", "query", "--db", str(tmp_path / "nope.db"), "--serial", "x")
    assert missing.returncode == 1
    assert "no such recorder database" in missing.stderr
