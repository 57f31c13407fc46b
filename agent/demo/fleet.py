"""`fixture-agent demo --fleet N`: N simulated stations, the plant service and two rollouts.

One private mosquitto; the plant service runs the recorder, the rollout engine and the console.
Every station (in-memory targets, so N of them fit on a small machine) starts on a good set A and
programs units without end, as an operator would; a small MES gives each station a job for the
set it reports active. Then set B, whose application image the simulated parts fail to take at
``fault_rate``, is rolled out with action ``rollback`` and must stop at wave 1; then set C (good)
must reach every station. The plant database is a SQLite file in the work folder, or the
PostgreSQL database ``FleetOptions.plant_db`` names.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from agent.config import StationConfig, parse_config
from agent.demo.images import ReleaseKey, demo_job, demo_manifest, write_images
from agent.plant.publish import publish_retained
from agent.plant.rollout.model import Gate, RolloutPlan, RolloutState, parse_waves
from agent.plant.rollout.report import format_rollout
from agent.plant.rollout.store import RolloutStore
from agent.plant.service import PlantOptions, PlantParts, serve_plant
from agent.sim.broker import LocalBroker
from agent.station.app import StationParts, build_hardware, serve
from agent.wire.mqtt import BrokerEndpoint
from agent.wire.topics import StationTopics

GROUP = "line-1"
PINS = {"clamp_sensor": 17, "clamp_actuator": 27, "dut_power": 22, "interlock": 23,
        "lamp_pass": 5, "lamp_fail": 6, "lamp_busy": 13}


@dataclass(frozen=True)
class FleetOptions:
    """What the fleet demo runs."""

    stations: int = 6
    fault_rate: float = 0.5
    waves: str = "1,50%,100%"
    min_units: int = 8
    console: tuple[str, int] = ("127.0.0.1", 0)
    operator_token: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    tick_s: float = 0.2
    rollout_timeout_s: float = 240.0
    engine: bool = True  # False: the caller runs its own engine (tests restart it)
    plant_db: str | None = None  # a postgresql:// URL; None: plant/records.db in the workdir
    rollouts: tuple[str, ...] = ("bad", "good")  # which of the two, in this order


def fleet_station_config(*, workdir: Path, port: int, station: str, trust: dict[str, Any],
                         faults: list[dict[str, Any]]) -> StationConfig:
    """One fleet station: an in-memory target, fast timings, the group, the set's fault."""
    raw = {
        "station": {"id": station},
        "broker": {"host": "127.0.0.1", "port": port, "keepalive_s": 5, "group": GROUP,
                   "reconnect_min_s": 0.1, "reconnect_max_s": 1.0},
        "fixture": {"backend": "sim", "pins": dict(PINS), "clamp_settle_ms": 2,
                    "power_settle_ms": 1},
        "slots": [{"name": "a", "backend": "sim-flash", "op_delay_ms": 5}],
        "storage": {"dir": str(workdir / station)},
        "trust": trust,
        "limits": {"record_ack_timeout_s": 5, "min_free_disk_mb": 1},
        "simulation": {"faults": faults},
    }
    return parse_config(raw, source=f"fleet {station}", base=workdir)


class FleetDemo:
    """Runs the fleet scenario; ``out`` gets the story, ``plant`` the running plant's parts."""

    def __init__(self, *, workdir: Path, options: FleetOptions, out: TextIO,
                 on_plant: Callable[[PlantParts], None] | None = None) -> None:
        self.workdir = workdir
        self.options = options
        self.out = out
        self.on_plant = on_plant
        self.key = ReleaseKey("fleet-release")
        self.names = [f"fleet-{i:02d}" for i in range(1, options.stations + 1)]
        self.stations: dict[str, StationParts] = {}
        self.plant: PlantParts | None = None
        self.endpoint: BrokerEndpoint | None = None
        self._jobs: dict[str, str] = {}
        self.station_tasks: dict[str, asyncio.Task[None]] = {}
        self.baseline_done = asyncio.Event()

    @property
    def plant_db(self) -> str:
        """The plant database: the URL asked for, or the SQLite file in the work folder."""
        return self.options.plant_db or str(self.workdir / "plant" / "records.db")

    def say(self, line: str) -> None:
        """One line of the story."""
        print(line, file=self.out, flush=True)

    def signed(self, set_id: str, sequence: int, variant: str) -> tuple[bytes, str]:
        """A signed set of the demo product; returns it and its application image's sha256."""
        images = write_images(self.workdir / "images" / set_id, variant=variant)
        manifest = demo_manifest(images, uicr_flag=False, set_id=set_id, sequence=sequence,
                                 activation="immediate")
        app = next(i for i in images if i["role"] == "application")
        return self.key.sign(manifest), app["sha256"]

    async def run(self, *, scenario: bool = True, stay: bool = False) -> dict[str, str]:
        """Broker, plant, stations; the two rollouts; returns each rollout's final state."""
        broker = LocalBroker(self.workdir / "broker")
        await broker.start()
        self.endpoint = BrokerEndpoint(host="127.0.0.1", port=broker.port)
        try:
            return await self._run(broker.port, scenario=scenario, stay=stay)
        finally:
            await broker.stop()

    async def _run(self, port: int, *, scenario: bool, stay: bool) -> dict[str, str]:
        assert self.endpoint is not None
        good_a, _ = self.signed("sensor-node-2026.11", 7, "")
        bad_b, bad_sha = self.signed("sensor-node-2026.12", 8, "b")
        good_c, _ = self.signed("sensor-node-2026.12.1", 9, "c")
        faults = [{"sha256": bad_sha, "rate": self.options.fault_rate}]
        plant_ready: asyncio.Future[PlantParts] = asyncio.get_running_loop().create_future()
        options = PlantOptions(db=self.plant_db, endpoint=self.endpoint,
                               rollouts=self.options.engine, console=self.options.console,
                               operator_token=self.options.operator_token,
                               tick_s=self.options.tick_s)
        result: dict[str, str] = {}
        async with asyncio.TaskGroup() as group:
            plant_task = group.create_task(serve_plant(options, plant_ready.set_result))
            self.plant = await plant_ready
            if self.on_plant is not None:
                self.on_plant(self.plant)
            assert self.plant.console is not None
            self.say(f"broker: mosquitto on 127.0.0.1:{port}")
            self.say(f"plant console: {self.plant.console.url} (operator token "
                     f"{self.options.operator_token})")
            tasks = [group.create_task(self._station(name, port, faults), name=name)
                     for name in self.names]
            self.station_tasks = dict(zip(self.names, tasks, strict=True))
            mes = group.create_task(self._mes(), name="mes")
            await self._baseline(good_a)
            self.baseline_done.set()
            if scenario:
                for label in self.options.rollouts:
                    signed = {"bad": bad_b, "good": good_c}[label]
                    result[label] = await self._rollout(signed, label)
            if stay:
                self.say("serving until interrupted (Ctrl-C)")
                await asyncio.Event().wait()
            for task in (*tasks, mes):  # stations first: they leave their offline status
                task.cancel()
            await asyncio.wait([*tasks, mes])
            plant_task.cancel()
        return result

    async def _station(self, name: str, port: int, faults: list[dict[str, Any]]) -> None:
        config = fleet_station_config(workdir=self.workdir / "stations", port=port, station=name,
                                      trust=self.key.trust_section(), faults=faults)
        hardware = await build_hardware(config)
        started: asyncio.Future[StationParts] = asyncio.get_running_loop().create_future()
        async with asyncio.TaskGroup() as group:
            group.create_task(serve(config, hardware, started=started.set_result))
            parts = self.stations[name] = await started
            await self._operate(parts, hardware.sim.operator)

    async def _operate(self, parts: StationParts, operator: Any) -> None:
        """The operator: a board through the fixture whenever the station takes one."""
        while True:
            if not parts.status.accepting_units:
                await asyncio.sleep(0.05)
                continue
            with contextlib.suppress(TimeoutError):
                await operator.cycle_one(timeout=30)
            await asyncio.sleep(0.02)

    async def _mes(self) -> None:
        """The plant's MES: each station gets a job for the set it reports active."""
        assert self.plant is not None
        assert self.plant.fleet is not None
        fleet, count = self.plant.fleet, 0
        while True:
            for name in self.names:
                active = fleet.active_set(name, "sensor-node")
                if active is not None and self._jobs.get(name) != active:
                    count += 1
                    job = demo_job(set_id=active, job_id=f"wo-{name}-{count}", station=name,
                                   units=4_000, first_serial=count * 10_000)
                    await publish_retained(self.endpoint_or_fail(), StationTopics(name).job,
                                           json.dumps(job).encode(), client_id="plant-mes")
                    self._jobs[name] = active
            await asyncio.sleep(0.1)

    def endpoint_or_fail(self) -> BrokerEndpoint:
        """The broker (known once run() started)."""
        assert self.endpoint is not None
        return self.endpoint

    async def _baseline(self, signed: bytes) -> None:
        """Every station on set A, and enough units on it to compare later sets with."""
        for name in self.names:
            await publish_retained(self.endpoint_or_fail(), StationTopics(name).firmware_set,
                                   signed, client_id="plant-demo")
        self.say(f"{len(self.names)} stations of group {GROUP} start on sensor-node-2026.11")
        async with asyncio.timeout(120):
            while any(self._passed(n) < self.options.min_units for n in self.names):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        self.say(f"every station has programmed {self.options.min_units}+ units on it")

    def _passed(self, name: str) -> int:
        parts = self.stations.get(name)
        job = parts.jobs.current if parts is not None else None
        return job.passed if job is not None else 0

    async def _rollout(self, signed: bytes, label: str) -> str:
        manifest = json.loads(signed)["manifest"]
        gate = Gate(min_units=self.options.min_units, max_fpy_drop_pp=5.0,
                    failure_code="verify_mismatch", max_failure_rate_pct=5.0, action="rollback",
                    activation_timeout_s=60, offline_timeout_s=30)
        plan = RolloutPlan(set_id=manifest["set_id"], product=manifest["product"],
                           signed_set=signed.decode(), stations=tuple(self.names),
                           waves=parse_waves(self.options.waves), gate=gate,
                           target=f"group {GROUP}")
        store = await RolloutStore.open(self.plant_db)
        try:
            rollout_id = await store.create(plan, by="demo", approved=True)
            self.say(f"\n$ fixture-agent plant rollout start {manifest['set_id']}.signed.json "
                     f"--group {GROUP} --waves {self.options.waves} --gate min_units="
                     f"{gate.min_units},max_fpy_drop=5,max_failure_rate=5,action=rollback"
                     f"   # the {label} set (digest {hashlib.sha256(signed).hexdigest()[:12]})")
            async with asyncio.timeout(self.options.rollout_timeout_s):
                while (rollout := await store.load(rollout_id)).state not in (  # noqa: ASYNC110
                        RolloutState.ROLLED_BACK, RolloutState.COMPLETED, RolloutState.PAUSED):
                    await asyncio.sleep(0.2)
            self.say(f"\n$ fixture-agent plant rollout status {rollout_id}\n"
                     f"{format_rollout(rollout)}")
            return str(rollout.state)
        finally:
            await store.close()


def run_fleet(options: FleetOptions, *, workdir: Path, stay: bool = False) -> int:
    """Run the fleet demo; 0 when the bad set was rolled back and the good one completed."""
    import sys

    result: dict[str, str] = {}
    try:
        result = asyncio.run(FleetDemo(workdir=workdir, options=options, out=sys.stdout).run(
            stay=stay))
    except* TimeoutError:
        print("fleet demo: timed out waiting for the stations or a rollout (see the log above)",
              file=sys.stderr)
    ok = result == {"bad": "rolled_back", "good": "completed"}
    print(f"\nfleet demo: bad set {result.get('bad')}, good set {result.get('good')}: "
          f"{'as expected' if ok else 'NOT as expected'}")
    return 0 if ok else 1
