"""`fixture-agent demo`: broker, recorder and a simulated station, N units end to end.

It exits 0 only when every unit's record is stored by the recorder and acknowledged back to the
station (the outbox is empty), and prints the trace of one serial as the buyer would ask for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sys
import time
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from agent.config import SignerSection, StationConfig, parse_config
from agent.demo.factory_check import PartitionCheck
from agent.demo.images import (
    MANUFACTURING,
    ReleaseKey,
    demo_job,
    demo_manifest,
    stm32_manifest,
    write_images,
    write_stm32_images,
)
from agent.demo.signer import KEY_LABEL, PlantPki, RunningSigner, init_token, running_signer
from agent.firmware.crypto import public_key_pem
from agent.plant.pki import cert_pem
from agent.plant.publish import publish_retained
from agent.plant.recorder import Recorder
from agent.plant.records import RecordStore, open_record_db
from agent.plant.signer import job_folder
from agent.plant.trace import find_by_serial, format_trace, missing_sequences
from agent.sim.broker import LocalBroker
from agent.station.app import StationParts, build_hardware, serve
from agent.wire.messages import UnitRecord
from agent.wire.mqtt import BrokerEndpoint
from agent.wire.topics import StationTopics

ACK_WAIT_S = 60.0


# BCM pins free after the fixture's own, for the panel's per-slot PASS/FAIL lamps.
FREE_PINS = (24, 25, 12, 16, 20, 21, 18, 19, 26, 4, 2, 3, 7, 8, 9, 10, 11, 14, 15, 0, 1)
SLOT_NAMES = "abcdefghijklmnop"


def demo_slots(*, backend: str, count: int, workdir: Path) -> list[dict[str, Any]]:
    """A panel of ``count`` slots; each gets its own lamps while free pins last."""
    slots = []
    lamp_pins = iter(FREE_PINS)
    for name in SLOT_NAMES[:count]:
        slot: dict[str, Any] = {"name": name, "backend": backend}
        if backend == "pyocd":
            slot["probe"] = f"sim:demo-{name}"
        elif backend == "stm32-uart":
            slot |= {"port": str(workdir / f"tty-{name}"), "baud": 921600}
        if count > 1 and (pins := list(itertools.islice(lamp_pins, 2))) and len(pins) == 2:
            slot["lamp_pass"], slot["lamp_fail"] = pins
        slots.append(slot)
    return slots


def demo_config(*, workdir: Path, broker_port: int, backend: str, trust: dict[str, Any],
                slots: int = 1) -> StationConfig:
    """The embedded demo configuration with this run's broker, folders, panel and key."""
    raw: dict[str, Any] = tomllib.loads(
        resources.files("agent.demo").joinpath("station.toml").read_text())
    raw["broker"]["port"] = broker_port
    raw["simulation"]["board_dir"] = str(workdir / "boards")
    raw["trust"] = trust
    raw["slots"] = demo_slots(backend=backend, count=slots, workdir=workdir)
    return parse_config(raw, source="demo", base=workdir, state_dir=workdir / "station")


@dataclass
class DemoResult:
    """What the demo saw."""

    records: list[UnitRecord]
    acknowledged: bool
    missing: list[int]
    factory_problems: list[str]


class Demo:
    """Runs one demo scenario and reports to ``out``."""

    def __init__(self, *, units: int, workdir: Path, backend: str, out: TextIO,
                 kept: bool = True, slots: int = 1) -> None:
        self.units = units
        self.slots = slots
        self.workdir = workdir
        self.kept = kept  # False: the run's files are removed when it ends
        self.backend = backend
        self.out = out
        self.records: list[UnitRecord] = []
        self._recorder: Recorder
        self._release_key = ReleaseKey()
        self._check: PartitionCheck | None = None

    def say(self, line: str) -> None:
        """One line of demo output."""
        print(line, file=self.out, flush=True)

    async def run(self) -> DemoResult:
        """Broker, recorder, signer, station; publish the job; cycle the units; wait for acks."""
        signer_dir = self.workdir / "signer"
        await asyncio.to_thread(init_token, signer_dir)
        pki = await asyncio.to_thread(PlantPki.create, signer_dir / "pki")
        self._jobs_dir = signer_dir / "jobs"  # the service reads JOB_ID.json on each request
        self._jobs_dir.mkdir(parents=True, exist_ok=True)
        async with running_signer(signer_dir, pki=pki, jobs=job_folder(self._jobs_dir),
                                  key_label=KEY_LABEL) as signer:
            public_pem = signer_dir / "factory-data.pub.pem"
            public_pem.write_text(public_key_pem(signer.public_key))
            for name, cert in (("device-root", signer.device_root),
                               ("device-intermediate", signer.device_intermediate)):
                (signer_dir / f"{name}.pem").write_bytes(cert_pem(cert))
            self.say(f"signer: {signer.url} signs factory data with {signer.key_ref} "
                     f"(SoftHSM2 token in {signer_dir}; public key {public_pem})")
            return await self._with_signer(pki, signer)

    async def _with_signer(self, pki: PlantPki, signer: RunningSigner) -> DemoResult:
        broker = LocalBroker(self.workdir / "broker")
        await broker.start()
        self.say(f"broker: mosquitto on 127.0.0.1:{broker.port}")
        db = await open_record_db(self.workdir / "plant" / "records.db")
        endpoint = BrokerEndpoint(host="127.0.0.1", port=broker.port)
        recorder = self._recorder = Recorder(endpoint=endpoint, store=RecordStore(db))
        config = demo_config(workdir=self.workdir, broker_port=broker.port, backend=self.backend,
                             slots=self.slots,
                             trust=self._release_key.trust_section())
        identity = pki.station(self.workdir / "station-tls", config.station.id)
        config = config.model_copy(update={"signer": SignerSection(
            url=signer.url, ca=signer.plant_ca, cert=identity.cert, key=identity.key)})
        hardware = await build_hardware(config)
        self._check = PartitionCheck(bays=hardware.sim.bays, address=MANUFACTURING["address"],
                                     size=MANUFACTURING["size"], public_key=signer.public_key,
                                     keep=self.workdir / "partitions",
                                     device_ca=signer.device_intermediate)
        started: asyncio.Future[StationParts] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.TaskGroup() as group:
                recorder_task = group.create_task(recorder.run(), name="recorder")
                station_task = group.create_task(
                    serve(config, hardware, started=started.set_result), name="station")
                parts = await started
                parts.station.record_listeners.append(self._on_record)
                result = await self._scenario(config, parts, hardware.sim, endpoint, db)
                station_task.cancel()
                recorder_task.cancel()
            return result
        finally:
            await db.close()
            await broker.stop()

    def _on_record(self, record: UnitRecord) -> None:
        self.records.append(record)
        total = sum(s.duration_ms for s in record.stages)
        verdict = record.outcome.upper()
        if record.failure is not None:
            verdict += f" {record.failure.code} at {record.failure.stage}"
        self.say(f"unit {len(self.records):>3}: serial {record.serial} chip {record.chip_uid} "
                 f"slot {record.slot}: {verdict} in {total:.0f} ms (record seq {record.seq})")
        if self._check is not None:
            self.say(f"          {self._check.check(record)}")

    async def _scenario(self, config: StationConfig, parts: StationParts, sim: Any,
                        endpoint: BrokerEndpoint, db: Any) -> DemoResult:
        await asyncio.wait_for(parts.link.connected.wait(), 10)
        await asyncio.wait_for(self._recorder.connected.wait(), 10)
        topics = StationTopics(config.station.id)
        if self.backend == "stm32-uart":
            manifest = stm32_manifest(write_stm32_images(self.workdir / "images"), signed=True)
        else:
            manifest = demo_manifest(write_images(self.workdir / "images"),
                                     uicr_flag=self.backend == "pyocd",
                                     set_id="sensor-node-2026.11", sequence=7, signed=True,
                                     device_certificate=self.backend == "pyocd")
        (self.workdir / "set.json").write_text(json.dumps(manifest, indent=1))
        signed = self._release_key.sign(manifest)
        await publish_retained(endpoint, topics.firmware_set, signed, client_id="plant-demo")
        self.say(f"firmware set {manifest['set_id']} (sequence {manifest['sequence']}, "
                 f"{len(manifest['images'])} images) signed by {self._release_key.key_id} "
                 "and published")
        panels = -(-self.units // len(config.slots))  # whole panels: every slot, every cycle
        job = demo_job(set_id=manifest["set_id"], job_id=f"demo-{int(time.time())}",
                       station=config.station.id, units=panels * len(config.slots),
                       product=manifest["product"])
        (self._jobs_dir / f"{job['job_id']}.json").write_text(json.dumps(job))
        await publish_retained(endpoint, topics.job, json.dumps(job).encode(),
                               client_id="plant-demo")
        self.say(f"job {job['job_id']}: {job['quantity']} x {job['product']} with firmware set "
                 f"{job['set_id']}, {panels} panel(s) of {len(config.slots)} slot(s)")
        t0 = time.monotonic()
        await sim.operator.run(panels)
        elapsed = time.monotonic() - t0
        acknowledged = await self._wait_for_acks(parts)
        missing = await missing_sequences(db, config.station.id)
        passed = sum(r.outcome == "pass" for r in self.records)
        self.say(f"summary: {len(self.records)} units in {elapsed:.1f} s, {passed} pass, "
                 f"{len(self.records) - passed} fail; outbox "
                 f"{'empty: every record acknowledged' if acknowledged else 'NOT drained'}; "
                 f"sequence gaps: {missing or 'none'}")
        if self.records and self.records[-1].serial:
            serial = self.records[-1].serial
            if self.kept:
                self.say(f"\n$ fixture-agent trace {serial} --db {self.workdir}/plant/records.db")
            else:
                self.say(f"\ntrace of serial {serial} (this run's files are removed when it ends; "
                         "keep them with --workdir DIR to trace serials afterwards):")
            self.say(format_trace(await find_by_serial(db, serial)))
        if self._check is not None and self._check.checked:
            self.say(f"factory data: {self._check.checked} partition(s) read back and checked, "
                     f"{len(self._check.problems)} problem(s)")
        return DemoResult(records=self.records, acknowledged=acknowledged, missing=missing,
                          factory_problems=self._check.problems if self._check else [])

    async def _wait_for_acks(self, parts: StationParts) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ACK_WAIT_S):
                while await parts.outbox.depth() > 0:  # noqa: ASYNC110 (a row count)
                    await asyncio.sleep(0.05)
                return True
        return False


def run_demo(*, units: int, workdir: Path, backend: str, kept: bool = True,
             slots: int = 1) -> int:
    """Run the demo; 0 only when all whole panels' records were acknowledged without gaps."""
    result = asyncio.run(Demo(units=units, workdir=workdir, backend=backend, out=sys.stdout,
                              kept=kept, slots=slots).run())
    expected = -(-units // slots) * slots
    ok = (result.acknowledged and len(result.records) == expected and not result.missing
          and not result.factory_problems)
    return 0 if ok else 1
