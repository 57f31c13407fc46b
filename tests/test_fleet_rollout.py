"""Yield-gated rollouts on a simulated fleet: real mosquitto, real stations, real SQLite.

The fleet demo's two rollouts (a bad set halted at wave 1 and rolled back, a good set reaching
every station), and an engine restarted mid-rollout that carries on from the database, with a
station that goes offline mid-rollout failing its wave after the timeout instead of passing.
On PostgreSQL: the bad set's rollout with the console reading beside it, and the plant service
and the rollout commands as a person runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from agent.demo.fleet import FleetDemo, FleetOptions
from agent.demo.images import ReleaseKey
from agent.plant.publish import publish_retained
from agent.plant.rollout.engine import RolloutEngine
from agent.plant.rollout.model import Gate, RolloutPlan, RolloutState, WaveState
from agent.plant.rollout.store import RolloutStore
from agent.plant.rollout.yields import RecordYields
from agent.plant.service import PlantParts
from agent.sim.broker import LocalBroker
from agent.wire.codec import encode
from agent.wire.messages import StationStatus
from agent.wire.mqtt import BrokerEndpoint
from agent.wire.topics import StationTopics

GOOD = "sensor-node-2026.12.1"
BAD = "sensor-node-2026.12"
BEFORE = "sensor-node-2026.11"


async def test_bad_set_is_rolled_back_at_wave_one_and_good_set_reaches_every_station(
        tmp_path: Path) -> None:
    out = io.StringIO()
    demo = FleetDemo(workdir=tmp_path, out=out,
                     options=FleetOptions(stations=3, fault_rate=1.0, min_units=3,
                                          rollout_timeout_s=120))
    result = await demo.run()
    assert result == {"bad": "rolled_back", "good": "completed"}, out.getvalue()

    store = await RolloutStore.open(str(tmp_path / "plant" / "records.db"))
    try:
        bad, good = await store.load(1), await store.load(2)
    finally:
        await store.close()
    assert [w.state for w in bad.waves] == [WaveState.FAILED, WaveState.PENDING,
                                            WaveState.PENDING]
    assert [s.station for s in bad.touched()] == ["fleet-01"]  # nobody else ever got it
    assert all(s.rolled_back_at is not None for s in bad.touched())
    gate_fail = next(d for d in bad.decisions if d.kind == "gate_fail")
    assert gate_fail.figures is not None
    assert gate_fail.figures.fpy_pct == 0.0
    assert gate_fail.figures.baseline_fpy_pct == 100.0
    assert gate_fail.figures.failure_count == gate_fail.figures.units >= 3
    assert [w.state for w in good.waves] == [WaveState.PASSED] * 3
    assert all(d.figures.fpy_drop_pp == 0.0 for d in good.decisions if d.figures is not None)

    status = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "agent", "plant", "rollout", "status", "--db",
                         str(tmp_path / "plant" / "records.db")],
        capture_output=True, text=True, timeout=60, check=False)
    assert status.returncode == 0, status.stderr
    assert f"rollout 1: {BAD} (sensor-node) to group line-1: ROLLED_BACK" in status.stdout
    assert "verify_mismatch" in status.stdout
    assert f"rollout 2: {GOOD} (sensor-node) to group line-1: COMPLETED" in status.stdout


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():  # noqa: ASYNC110 (rows another process writes)
            await asyncio.sleep(0.1)


async def test_engine_restarted_mid_rollout_carries_on_and_an_offline_station_fails_its_wave(
        tmp_path: Path) -> None:
    demo = FleetDemo(workdir=tmp_path, out=io.StringIO(),
                     options=FleetOptions(stations=2, min_units=3, engine=False))
    fleet_task = asyncio.create_task(demo.run(scenario=False, stay=True))
    store = await RolloutStore.open(str(tmp_path / "plant" / "records.db"))
    engine_task = None
    try:
        await asyncio.wait_for(demo.baseline_done.wait(), 120)
        assert demo.plant is not None
        assert demo.plant.fleet is not None
        fleet = demo.plant.fleet
        signed, _ = demo.signed(GOOD, 9, "c")
        gate = Gate(min_units=3, action="pause", approve_each_wave=True,
                    activation_timeout_s=2, offline_timeout_s=2)
        rollout_id = await store.create(RolloutPlan(
            set_id=GOOD, product="sensor-node", signed_set=signed.decode(),
            stations=("fleet-01", "fleet-02"), waves=("1", "100%"), gate=gate,
            target="stations fleet-01,fleet-02"), by="test", approved=True)

        def engine() -> asyncio.Task[None]:
            return asyncio.create_task(RolloutEngine(
                store=store, yields=RecordYields(store.backend), fleet=fleet,
                endpoint=demo.endpoint_or_fail(), tick_s=0.1).run())

        async def wave_state(index: int, state: WaveState) -> bool:
            return (await store.load(rollout_id)).waves[index].state == state

        engine_task = engine()
        await wait_for(lambda: wave_state(0, WaveState.MEASURING))
        engine_task.cancel()  # the engine dies mid-wave ...
        with contextlib.suppress(asyncio.CancelledError):
            await engine_task
        engine_task = engine()  # ... and a new one carries on from the database
        await wait_for(lambda: wave_state(0, WaveState.PASSED))

        async def state_is(state: RolloutState) -> bool:
            return (await store.load(rollout_id)).state == state

        await wait_for(lambda: state_is(RolloutState.AWAITING_APPROVAL))
        demo.station_tasks["fleet-02"].cancel()  # the next wave's only station goes away
        await wait_for(lambda: _offline(fleet, "fleet-02"))
        await store.move(rollout_id, RolloutState.RUNNING, kind="approve", actor="test",
                         summary="approved")
        await wait_for(lambda: state_is(RolloutState.PAUSED))
        rollout = await store.load(rollout_id)
        assert [w.state for w in rollout.waves] == [WaveState.PASSED, WaveState.FAILED]
        kinds = [d.kind for d in rollout.decisions]
        assert kinds.count("publish") == 2  # one per wave: the restart published nothing twice
        assert kinds.count("active") == 1  # fleet-01 only; fleet-02 never counted
        assert kinds[-1] == "timeout"
        assert "fleet-02 did not report" in rollout.decisions[-1].summary
        assert rollout.decisions[-1].summary.endswith("action: pause")
    finally:
        if engine_task is not None:
            engine_task.cancel()
        fleet_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await fleet_task
        await store.close()


async def _offline(fleet: object, station: str) -> bool:
    return not fleet.online_since(station)[0]  # type: ignore[attr-defined]


async def made_by_the_plant_service(db: str) -> None:
    """The plant database, as the plant service leaves it (rollout commands refuse a new path)."""
    await (await RolloutStore.open(db)).close()


def test_rollout_commands_answer_in_sentences(tmp_path: Path) -> None:
    db = str(tmp_path / "plant.db")
    asyncio.run(made_by_the_plant_service(db))
    signed = tmp_path / "set.json"
    signed.write_text(json.dumps({"manifest": {"set_id": "fw-2", "product": "p"},
                                  "signatures": []}))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent", "plant", "rollout", *args],
                              capture_output=True, text=True, timeout=60, check=False)

    started = cli("start", str(signed), "--stations", "a,b,c", "--waves", "1,100%", "--hold",
                  "--gate", "min_units=5,action=rollback", "--db", db, "--by", "ana")
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == ("rollout 1: fw-2 to stations a,b,c, waves 1,100%, "
                                      "awaiting approval")
    refused = cli("resume", "1", "--db", db)
    assert refused.returncode == 1
    assert "rollout 1 is awaiting_approval and cannot become running" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert cli("approve", "1", "--db", db, "--by", "bo").stdout.strip() == "rollout 1 approved"
    missing = cli("pause", "7", "--db", db)
    assert (missing.returncode, "there is no rollout 7" in missing.stderr) == (1, True)
    bad_gate = cli("start", str(signed), "--stations", "a", "--gate", "min=3", "--db", db)
    assert bad_gate.returncode == 2
    assert "'min=3' is not KEY=VALUE" in bad_gate.stderr
    status = cli("status", "1", "--db", db)
    assert "RUNNING" in status.stdout
    assert "approved by bo" in status.stdout
    pem = ReleaseKey("k").trust_section()["keys"][0]["public_key_pem"]
    trust = tmp_path / "trust.toml"
    trust.write_text(f'[trust]\n[[trust.keys]]\nkey_id = "k"\nalg = "ed25519"\n'
                     f'public_key_pem = """{pem}"""\n')
    unsigned = cli("start", str(signed), "--stations", "a", "--trust-store", str(trust),
                   "--db", db)
    assert unsigned.returncode == 1
    assert "the stations would refuse this set" in unsigned.stderr
    assert "Traceback" not in unsigned.stderr


async def test_station_offline_mid_wave_fails_it_after_the_timeout_and_abort_rolls_back(
        tmp_path: Path) -> None:
    demo = FleetDemo(workdir=tmp_path, out=io.StringIO(),
                     options=FleetOptions(stations=2, min_units=3, tick_s=0.1))
    fleet_task = asyncio.create_task(demo.run(scenario=False, stay=True))
    store = await RolloutStore.open(str(tmp_path / "plant" / "records.db"))
    try:
        await asyncio.wait_for(demo.baseline_done.wait(), 120)
        assert demo.plant is not None
        assert demo.plant.fleet is not None
        fleet = demo.plant.fleet
        signed, _ = demo.signed(GOOD, 9, "c")
        gate = Gate(min_units=100_000, action="pause", offline_timeout_s=1)  # never judged
        rollout_id = await store.create(RolloutPlan(
            set_id=GOOD, product="sensor-node", signed_set=signed.decode(),
            stations=("fleet-01", "fleet-02"), waves=("100%",), gate=gate,
            target="stations fleet-01,fleet-02"), by="test", approved=True)

        async def rollout_is(state: RolloutState) -> bool:
            return (await store.load(rollout_id)).state == state

        async def measuring() -> bool:
            return (await store.load(rollout_id)).waves[0].state == WaveState.MEASURING

        await wait_for(measuring)
        demo.station_tasks["fleet-02"].cancel()
        await wait_for(lambda: rollout_is(RolloutState.PAUSED))
        rollout = await store.load(rollout_id)
        assert rollout.waves[0].state == WaveState.FAILED
        last = rollout.decisions[-1]
        assert last.kind == "offline"
        assert last.summary.startswith("wave 1: fleet-02 offline for more than 1 s")

        await store.move(rollout_id, RolloutState.ROLLING_BACK, kind="abort", actor="test",
                         summary="aborted")

        async def fleet01_back() -> bool:
            return fleet.active_set("fleet-01", "sensor-node") == BEFORE

        await wait_for(fleet01_back)
        decisions = (await store.load(rollout_id)).decisions
        kinds = [(d.kind, d.summary.split(":")[0]) for d in decisions]
        assert ("rollback", "fleet-01") in kinds
        # fleet-02 went away on the new set: the rollback waits for it, it is not declared done
        await asyncio.sleep(0.5)
        assert await rollout_is(RolloutState.ROLLING_BACK)
    finally:
        fleet_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await fleet_task
        await store.close()


async def test_start_by_group_takes_the_stations_that_report_it(tmp_path: Path,
                                                                broker: LocalBroker) -> None:
    endpoint = BrokerEndpoint(host="127.0.0.1", port=broker.port)
    for station, group in (("st-b", "line-1"), ("st-a", "line-1"), ("st-c", "line-2")):
        status = StationStatus(station=station, state="online", group=group)
        await publish_retained(endpoint, StationTopics(station).status, encode(status),
                               client_id="test-status")
    signed = tmp_path / "set.json"
    signed.write_text(json.dumps({"manifest": {"set_id": "fw-2", "product": "p"}}))
    db = tmp_path / "plant.db"
    await made_by_the_plant_service(str(db))
    args = [sys.executable, "-m", "agent", "plant", "rollout", "start", str(signed), "--db",
            str(db), "--waves", "1,100%", "--broker", f"127.0.0.1:{broker.port}"]
    started = await asyncio.to_thread(subprocess.run, [*args, "--group", "line-1"],
                                      capture_output=True, text=True, timeout=60, check=False)
    assert started.returncode == 0, started.stderr
    assert "rollout 1: fw-2 to group line-1" in started.stdout
    nobody = await asyncio.to_thread(subprocess.run, [*args, "--group", "line-9"],
                                     capture_output=True, text=True, timeout=60, check=False)
    assert nobody.returncode == 2
    assert "no station on the broker reports group line-9" in nobody.stderr
    store = await RolloutStore.open(str(db))
    try:
        rollout = await store.load(1)
    finally:
        await store.close()
    assert [w.stations for w in rollout.waves] == [("st-a",), ("st-b",)]


async def console_state(demo: FleetDemo, parts: PlantParts) -> dict[str, Any]:
    """What the console shows once every station has its baseline units."""
    await demo.baseline_done.wait()
    assert parts.console is not None
    async with httpx.AsyncClient(base_url=parts.console.url, timeout=10) as client:
        response = await client.get("/api/state")
        response.raise_for_status()
        state: dict[str, Any] = response.json()
        trace = await client.get("/api/trace", params={"serial": state["units"][0]["serial"]})
        state["trace"] = trace.json()
    return state


async def test_on_postgresql_a_bad_set_is_halted_at_wave_one_and_rolled_back(
        tmp_path: Path, pg_url: str) -> None:
    looks: list[asyncio.Task[dict[str, Any]]] = []
    out = io.StringIO()
    demo = FleetDemo(workdir=tmp_path, out=out,
                     options=FleetOptions(stations=3, fault_rate=1.0, min_units=3,
                                          rollout_timeout_s=120, plant_db=pg_url,
                                          rollouts=("bad",)),
                     on_plant=lambda parts: looks.append(
                         asyncio.create_task(console_state(demo, parts))))
    result = await demo.run()
    assert result == {"bad": "rolled_back"}, out.getvalue()
    assert not (tmp_path / "plant").exists()  # nothing went to a SQLite file

    store = await RolloutStore.open(pg_url)
    try:
        bad = await store.load(1)
    finally:
        await store.close()
    assert [w.state for w in bad.waves] == [WaveState.FAILED, WaveState.PENDING,
                                            WaveState.PENDING]
    assert [s.station for s in bad.touched()] == ["fleet-01"]
    assert all(s.rolled_back_at is not None for s in bad.touched())
    gate_fail = next(d for d in bad.decisions if d.kind == "gate_fail")
    assert gate_fail.figures is not None
    assert (gate_fail.figures.fpy_pct, gate_fail.figures.baseline_fpy_pct) == (0.0, 100.0)
    assert gate_fail.figures.failure_count == gate_fail.figures.units >= 3

    state = await looks[0]
    assert {s: y["fpy_pct"] for s, y in state["yields"].items()} == {
        "fleet-01": 100.0, "fleet-02": 100.0, "fleet-03": 100.0}
    assert {u["set_id"] for u in state["units"]} == {BEFORE}
    assert state["trace"]["records"][0]["firmware_set_id"] == BEFORE

    status = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "agent", "plant", "rollout", "status", "--db",
                         pg_url], capture_output=True, text=True, timeout=60, check=False)
    assert status.returncode == 0, status.stderr
    assert f"rollout 1: {BAD} (sensor-node) to group line-1: ROLLED_BACK" in status.stdout
    assert "verify_mismatch" in status.stdout


async def test_plant_service_and_rollout_commands_run_on_postgresql(
        tmp_path: Path, pg_url: str, broker: LocalBroker) -> None:
    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "agent", "plant", "rollout", *args,
                             "--db", pg_url], capture_output=True, text=True, timeout=60,
            check=False)

    service = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "recorder", "--db", pg_url, "--rollouts", "--console",
        "127.0.0.1:0", "--operator-token-env", "PLANT_TOKEN", "--tick-s", "0.1", "--broker",
        f"127.0.0.1:{broker.port}", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "PLANT_TOKEN": "op-secret"})
    store = await RolloutStore.open(pg_url)
    try:
        assert service.stdout is not None
        line = (await asyncio.wait_for(service.stdout.readline(), 30)).decode()
        assert line.startswith("plant console: http://127.0.0.1:"), line
        url = line.split(": ", 1)[1].strip()
        signed = tmp_path / "set.json"
        signed.write_text(json.dumps({"manifest": {"set_id": "fw-2", "product": "p"}}))
        started = await cli("start", str(signed), "--stations", "st-a,st-b", "--waves",
                            "1,100%", "--hold", "--by", "ana")
        assert started.stdout.strip() == ("rollout 1: fw-2 to stations st-a,st-b, waves "
                                          "1,100%, awaiting approval"), started.stderr
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            approved = await client.post("/api/rollouts/1/approve",
                                         headers={"Authorization": "Bearer op-secret"})
        assert approved.json() == {"ok": True, "message": "rollout 1 approved"}

        async def published() -> bool:  # the engine in the service took it up
            return "publish" in [d.kind for d in (await store.load(1)).decisions]

        await wait_for(published, timeout=30)
        again = await cli("approve", "1")
        assert again.returncode == 1
        assert "rollout 1 is running and cannot become running" in again.stderr
        aborted = await cli("abort", "1", "--by", "bo")
        assert aborted.stdout.strip() == ("rollout 1 aborted: rolling the touched stations "
                                          "back"), aborted.stderr

        async def rolled_back() -> bool:  # st-a never ran the set: nothing to wait for
            return (await store.load(1)).state == RolloutState.ROLLED_BACK

        await wait_for(rolled_back, timeout=30)
        status = await cli("status", "1")
        assert "ROLLED_BACK" in status.stdout
        assert "approved by console" in status.stdout
        assert "aborted: rolling the touched stations back by bo" in status.stdout
    finally:
        await store.close()
        if service.returncode is None:
            service.terminate()
        await service.wait()
