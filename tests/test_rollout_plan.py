"""Rollout plans, their state machine in the plant database, and the yield figures a gate reads."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.commands.plant_rollout import parse_gate
from agent.errors import AgentError
from agent.plant.backends import open_backend
from agent.plant.records import Incoming, RecordStore
from agent.plant.rollout.actions import apply_action
from agent.plant.rollout.engine import gate_problems
from agent.plant.rollout.model import (
    IllegalMove,
    RolloutPlan,
    RolloutState,
    WaveState,
    parse_waves,
    wave_members,
)
from agent.plant.rollout.store import RolloutStore
from agent.plant.rollout.yields import RecordYields, judge
from agent.wire.messages import GENESIS_DIGEST, record_digest

STATIONS = tuple(f"st-{i:02d}" for i in range(1, 9))


def plan(**changes: Any) -> RolloutPlan:
    fields: dict[str, Any] = {"set_id": "fw-2", "product": "sensor-node", "signed_set": "{}",
                              "stations": STATIONS, "waves": ("1", "25%", "100%"),
                              "target": "group line-1"}
    return RolloutPlan(**(fields | changes))


@pytest.mark.parametrize(("waves", "expected"), [
    ("1,25%,100%", [1, 1, 6]),  # 25% of 8 is 2 stations in all: one more after the first
    ("2,50%", [2, 6]),  # the last wave always takes every station
    ("100%", [8]),
    ("1,1,3", [1, 7]),  # a wave that adds no station is skipped
])
def test_wave_sizes_are_cumulative(waves: str, expected: list[int]) -> None:
    members = wave_members(STATIONS, parse_waves(waves))
    assert [len(m) for m in members] == expected
    assert [s for wave in members for s in wave] == list(STATIONS)


@pytest.mark.parametrize("bad", ["", "0", "120%", "a", "1,,x"])
def test_bad_wave_sizes_are_refused_with_the_part(bad: str) -> None:
    with pytest.raises(ValueError, match="--waves"):
        parse_waves(bad)


def test_gate_option_parses_and_names_unknown_keys() -> None:
    gate = parse_gate("min_units=5,max_fpy_drop=1.5,failure_code=verify_mismatch,"
                      "max_failure_rate=2,action=rollback,approve_each_wave=yes")
    assert (gate.min_units, gate.max_fpy_drop_pp, gate.action, gate.approve_each_wave) == (
        5, 1.5, "rollback", True)
    with pytest.raises(AgentError, match="'speed=3' is not KEY=VALUE"):
        parse_gate("speed=3")
    with pytest.raises(AgentError, match="action"):
        parse_gate("action=explode")


def test_a_station_named_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="named twice"):
        plan(stations=("st-01", "st-01"))


async def test_moves_are_guarded_and_each_is_stored_with_its_decision(db_target: str) -> None:
    store = await RolloutStore.open(db_target)
    try:
        rollout_id = await store.create(plan(), by="ana", approved=False)
        rollout = await store.load(rollout_id)
        assert rollout.state == RolloutState.AWAITING_APPROVAL
        assert [len(w.stations) for w in rollout.waves] == [1, 1, 6]
        with pytest.raises(IllegalMove, match="awaiting_approval and cannot become running"):
            await apply_action(store, rollout_id, "resume", by="ana")  # resume is not approve
        await apply_action(store, rollout_id, "approve", by="ana")
        await apply_action(store, rollout_id, "pause", by="bo")
        with pytest.raises(IllegalMove):
            await apply_action(store, rollout_id, "pause", by="bo")
        await store.move(rollout_id, RolloutState.RUNNING, kind="resume", summary="go")
        await store.move_wave(rollout_id, 0, WaveState.ACTIVATING, kind="publish", summary="p")
        with pytest.raises(IllegalMove, match="wave 1 of rollout 1 is activating"):
            await store.move_wave(rollout_id, 0, WaveState.PASSED, kind="x", summary="skip")
        await apply_action(store, rollout_id, "abort", by="ana")
        with pytest.raises(IllegalMove):
            await apply_action(store, rollout_id, "approve", by="ana")
        rollout = await store.load(rollout_id)
        assert rollout.state == RolloutState.ROLLING_BACK
        assert [(d.kind, d.actor) for d in rollout.decisions] == [
            ("start", "ana"), ("approve", "ana"), ("pause", "bo"), ("resume", "engine"),
            ("publish", "engine"), ("abort", "ana")]
        assert rollout.waves[0].started_at is not None
        assert rollout.waves[0].started_at.tzinfo == UTC
        assert rollout.created_at <= rollout.decisions[-1].at
    finally:
        await store.close()


_CHAIN_HEADS: dict[str, str] = {}  # station -> digest of its last record made here


def record(station: str, seq: int, serial: str | None, outcome: str, set_id: str,
           code: str | None = None, minute: int = 0) -> Incoming:
    """A station's record, chained to the one this helper made before it (seq 1 starts over)."""
    at = (datetime(2026, 11, 1, 8, 0, tzinfo=UTC) + timedelta(minutes=minute + seq)).isoformat()
    prev = GENESIS_DIGEST if seq == 1 else _CHAIN_HEADS.get(station, GENESIS_DIGEST)
    body = {"schema": "fixture-agent/unit-record@2", "record_id": uuid.uuid4().hex, "seq": seq,
            "prev_digest": prev,
            "station": station, "slot": "a", "job_id": "wo-1", "product": "sensor-node",
            "serial": serial, "chip_uid": "00", "firmware_set_id": set_id,
            "manifest_digest": "0" * 64, "images": [], "started_at": at, "finished_at": at,
            "stages": [], "outcome": outcome, "routing": "ship" if outcome == "pass" else "rework",
            "failure": None if code is None else {"code": code, "stage": "verify", "detail": "x"},
            "agent_version": "t"}
    payload = json.dumps(body).encode()
    _CHAIN_HEADS[station] = record_digest(payload)
    return Incoming(station, payload)


async def test_first_pass_yield_counts_each_serial_once_by_its_first_attempt(
        db_target: str) -> None:
    backend = await open_backend(db_target)
    try:
        await RecordStore(backend).store_batch([
            record("st-01", 1, "SN-1", "fail", "fw-2", "verify_mismatch"),
            record("st-01", 2, "SN-1", "pass", "fw-2"),  # the retest does not raise the yield
            record("st-01", 3, "SN-2", "pass", "fw-2"),
            record("st-01", 4, None, "fail", "fw-2", "probe_lost"),  # no serial: its own unit
            record("st-02", 1, "SN-3", "pass", "fw-2"),
            record("st-02", 2, "SN-4", "pass", "fw-1"),  # another set
            record("st-03", 1, "SN-5", "fail", "fw-2", "verify_mismatch"),  # not in the wave
        ])
        yields = RecordYields(backend)
        new = await yields.set_yield(stations=("st-01", "st-02"), set_id="fw-2",
                                     failure_code="verify_mismatch")
        assert (new.units, new.passed_first, new.failure_count) == (4, 2, 1)
        base = await yields.set_yield(stations=("st-01", "st-02"), set_id="fw-1",
                                      failure_code="verify_mismatch")
        figures = judge(new, base, failure_code="verify_mismatch")
        assert (figures.fpy_pct, figures.baseline_fpy_pct, figures.fpy_drop_pp) == (
            50.0, 100.0, 50.0)
        assert figures.failure_rate_pct == 25.0
        problems = gate_problems(figures, max_drop=5, max_rate=30)
        assert len(problems) == 1
        assert "50.0 points below 100.0%" in problems[0]
        assert gate_problems(figures, max_drop=60, max_rate=30) == []
        later = await yields.set_yield(stations=("st-01",), set_id="fw-2", failure_code=None,
                                       since=datetime.now(UTC) + timedelta(hours=1))
        assert later.units == 0
        per_station = await yields.station_yields()
        assert per_station["st-02"].fpy_pct == 100.0
        assert [u.serial for u in await yields.last_units(limit=2)] != []
    finally:
        await backend.close()


async def test_engine_keeps_going_while_the_broker_is_away(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    from agent.plant.fleet import FleetWatch
    from agent.plant.rollout.engine import RolloutEngine
    from agent.sim.broker import free_port
    from agent.wire.mqtt import BrokerEndpoint

    endpoint = BrokerEndpoint(host="127.0.0.1", port=free_port())  # nobody listens there
    store = await RolloutStore.open(str(tmp_path / "plant.db"))
    try:
        rollout_id = await store.create(plan(), by="ana", approved=True)
        fleet = FleetWatch(endpoint=endpoint, client_id="t-fleet")
        fleet.connected.set()
        engine = RolloutEngine(store=store, yields=RecordYields(store.backend), fleet=fleet,
                               endpoint=endpoint, tick_s=0.05)
        task = asyncio.create_task(engine.run())
        async with asyncio.timeout(30):
            while "rollout tick failed" not in caplog.text:  # noqa: ASYNC110 (a log line)
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        assert not task.done()  # the failed publish was logged, not fatal
        task.cancel()
        rollout = await store.load(rollout_id)
        assert rollout.waves[0].state == WaveState.ACTIVATING
        assert all(s.published_at is None for s in rollout.steps)  # nothing claimed as sent
    finally:
        await store.close()
