"""The station: waits for a board, runs one unit per slot, stores the records, lights the lamp.

It owns the fixture-level stages (clamp, power, power off and release) and the one supervising
boundary where any exception of a slot becomes that unit's failure. Interlock and timeouts abort a
unit by asking each programmer to abort (closing its session) after the fixture has already cut DUT
power; the in-flight operation then fails on its own, no thread is left running behind a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import FailureCode, ProgrammerError, UnitFailure
from agent.firmware.manager import RolloutManager
from agent.firmware.rollout import Waiting
from agent.hw.fixture import Fixture, FixtureFault, Lamp
from agent.hw.programmer import ConnectOptions, Programmer
from agent.station.cycle import Stage, UnitPlan, UnitRun, program_unit
from agent.station.jobs import InterruptedUnit, JobBook
from agent.station.outbox import Outbox
from agent.station.panel import SerialTurns
from agent.station.signing import SignerClient
from agent.station.status import StatusBoard
from agent.station.store import StationStore
from agent.wire.codec import encode
from agent.wire.messages import UnitRecord

log = logging.getLogger(__name__)

RECHECK_S = 5.0  # how often blocked conditions that raise no event (free disk) are re-read


@dataclass(frozen=True)
class StationLimits:
    """When to stop starting new units, and how long one may take."""

    outbox_max_records: int
    min_free_disk_mb: int
    unit_timeout_s: float
    power_settle_s: float
    disk_path: Path


class Station:
    """The per-fixture supervisor: one unit cycle at a time, every slot in parallel."""

    def __init__(self, *, station_id: str, fixture: Fixture, programmers: dict[str, Programmer],
                 store: StationStore, jobs: JobBook, outbox: Outbox, status: StatusBoard,
                 limits: StationLimits, rollout: RolloutManager,
                 sets_changed: asyncio.Event, signer: SignerClient | None = None) -> None:
        self._id = station_id
        self._fixture = fixture
        self._programmers = programmers
        self._store = store
        self._jobs = jobs
        self._outbox = outbox
        self._status = status
        self._limits = limits
        self._rollout = rollout
        self._sets_changed = sets_changed
        self._signer = signer
        self._plan: UnitPlan | None = None
        self._prepared_for: ConnectOptions | None = None
        self._abort_code: FailureCode | None = None
        self._running = False
        self._background: set[asyncio.Task[None]] = set()
        self._outbox_changed = outbox.watch()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self.record_listeners: list[Callable[[UnitRecord], None]] = []

    async def run(self) -> None:
        """Serve units until cancelled; the fixture is left in its safe state."""
        self._fixture.safe_state()
        self._fixture.show(Lamp.OFF)
        self._fixture.on_interlock_open(lambda: self.abort(FailureCode.INTERLOCK_OPEN))
        await self._record_interrupted_units()
        await self._prepare_slots(None)  # every slot's worker started and warmed up now
        try:
            while True:
                await self._wait_until_ready()
                if self._plan is not None:
                    await self._prepare_slots(self._plan.connect_options())
                await self._wait_for_board()
                if self._stopping or await self.refresh():
                    await asyncio.sleep(0.1)
                    continue
                async with self._rollout.unit():  # no set activates or rolls back meanwhile
                    if await self._prepare_plan():  # the set may have moved since refresh()
                        continue
                    await self._cycle()
                await self._fixture.wait_for_removal()
                self._fixture.show(Lamp.OFF)
        finally:
            self._fixture.safe_state()

    def abort(self, code: FailureCode) -> None:
        """Abort the unit in progress (interlock, timeout, shutdown); no-op between units."""
        if not self._running or self._abort_code is not None:
            return
        log.warning("aborting unit: %s", code)
        self._abort_code = code
        for programmer in self._programmers.values():
            task = asyncio.get_running_loop().create_task(programmer.abort())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def stop(self, code: FailureCode, *, grace_s: float) -> None:
        """Start no new unit; abort the one in progress and wait (bounded) for its record."""
        self._stopping = True
        self.abort(code)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await self._idle.wait()

    async def refresh(self) -> list[str]:
        """Re-evaluate why the station cannot start a unit; publishes it; returns the reasons."""
        blocked = []
        view = self._jobs.current
        if view is None:
            blocked.append("no job")
        elif not view.runnable:
            blocked.append(f"job {view.job.job_id} is {view.state}")
        else:
            plan_problem = await self._prepare_plan()
            if plan_problem:
                blocked.append(plan_problem)
        depth = await self._outbox.depth()
        if depth >= self._limits.outbox_max_records:
            blocked.append(f"outbox holds {depth} unacknowledged records "
                           f"(limit {self._limits.outbox_max_records})")
        free_mb = (await asyncio.to_thread(shutil.disk_usage, self._limits.disk_path)).free >> 20
        if free_mb < self._limits.min_free_disk_mb:
            blocked.append(f"free disk {free_mb} MB below {self._limits.min_free_disk_mb} MB")
        self._status.update(accepting_units=not blocked, blocked=tuple(blocked),
                            job=view.progress() if view else None, outbox_depth=depth,
                            last_seq=await self._outbox.last_seq())
        return blocked

    async def _prepare_plan(self) -> str | None:
        """Make ``self._plan`` the current job's plan; returns why it cannot be, if it cannot."""
        view = self._jobs.current
        assert view is not None
        job = view.job
        ready = await self._rollout.job_set(job.set_id)
        if isinstance(ready, Waiting):
            return (f"job {job.job_id} waits for firmware set {job.set_id}: "
                    f"{ready.code}: {ready.reason}")
        verified = ready.verified
        manifest = verified.manifest
        if manifest.product != job.product:
            return (f"job {job.job_id} is for product {job.product} but set {job.set_id} is "
                    f"for {manifest.product}")
        if job.lock and manifest.lock == "never":
            return f"job {job.job_id} asks to lock but set {job.set_id} forbids locking"
        plan = self._plan
        if plan is None or plan.job != job or plan.manifest_digest != verified.digest:
            images = await self._rollout.image_bytes(ready)
            lock = manifest.lock == "always" or (manifest.lock == "on-request" and job.lock)
            self._plan = UnitPlan(job=job, set_id=verified.set_id,
                                  manifest_digest=verified.digest, station_id=self._id,
                                  firmware_set=verified.firmware_set, images=images, lock=lock)
        return None

    async def _prepare_slots(self, target: ConnectOptions | None) -> None:
        """Warm every slot's programmer up (imports, discovery, target lookup) before a board is
        accepted, once per target: the first panel after a start must not pay for it, or race
        on it. A slot that cannot get ready says why; its units will fail with that reason."""
        if target is not None and target == self._prepared_for:
            return
        slots = list(self._programmers)
        results = await asyncio.gather(*(self._programmers[slot].prepare(target)
                                         for slot in slots), return_exceptions=True)
        for slot, result in zip(slots, results, strict=True):
            if isinstance(result, Exception):
                log.error("slot %s is not ready: %s", slot, result)
        self._prepared_for = target

    async def _wait_until_ready(self) -> None:
        while await self.refresh():
            await self._wait_for_change()

    async def _wait_for_board(self) -> None:
        """Wait for a clamped board, keeping the status current meanwhile (a set may activate,
        a job arrive, acks drain while the fixture stands open)."""
        board = asyncio.ensure_future(self._fixture.wait_for_board())
        try:
            while True:
                await self._wait_for_change(board)
                if board.done():
                    return board.result()
                await self.refresh()
        finally:
            board.cancel()

    async def _wait_for_change(self, also: asyncio.Future[None] | None = None) -> None:
        """Until a job, outbox or set change (or ``also`` completes, or RECHECK_S passes)."""
        events = (self._jobs.changed, self._outbox_changed, self._sets_changed)
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(e.wait()) for e in events]
        watched = [*waiters, also] if also is not None else waiters
        try:
            await asyncio.wait(watched, timeout=RECHECK_S, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when the station is cancelled: no waiter outlives this call
            for waiter in waiters:
                waiter.cancel()
        for event in events:
            event.clear()  # refresh() re-reads everything, so no change is lost

    async def _cycle(self) -> None:
        plan = self._plan
        assert plan is not None
        runs = {slot: UnitRun(slot=slot, plan=plan) for slot in self._programmers}
        turns = SerialTurns(list(runs))
        self._abort_code = None
        self._running = True
        self._idle.clear()
        timer = asyncio.get_running_loop().call_later(self._limits.unit_timeout_s, self.abort,
                                                      FailureCode.TIMEOUT)
        self._fixture.show(Lamp.BUSY)
        try:
            if await self._power_up(runs):
                async with asyncio.TaskGroup() as group:
                    for slot, run in runs.items():
                        group.create_task(self._slot_unit(run, self._programmers[slot], turns),
                                          name=f"unit-{slot}")
        finally:
            timer.cancel()
            for run in runs.values():
                run.enter(Stage.POWER_OFF)
            self._fixture.safe_state()
            self._running = False
        try:
            for run in runs.values():
                run.finish()
                await self._commit(run)
        finally:
            self._idle.set()
        # Only after every record is stored: each slot's own lamp (X-out), then the common lamp,
        # FAIL if any slot failed.
        for slot, run in runs.items():
            self._fixture.show_slot(slot, Lamp.PASS if run.passed else Lamp.FAIL)
        passed = all(run.passed for run in runs.values())
        self._fixture.show(Lamp.PASS if passed else Lamp.FAIL)
        await self.refresh()

    async def _power_up(self, runs: dict[str, UnitRun]) -> bool:
        for stage, action in ((Stage.CLAMP, self._fixture.engage_clamp),
                              (Stage.POWER_ON, self._fixture.power_on)):
            for run in runs.values():
                run.enter(stage)
            try:
                action()
            except FixtureFault as exc:
                for run in runs.values():
                    run.fail(UnitFailure(code=exc.code, stage=stage, detail=str(exc)),
                             aborted=True)
                return False
        await asyncio.sleep(self._limits.power_settle_s)
        return True

    async def _slot_unit(self, run: UnitRun, programmer: Programmer, turns: SerialTurns) -> None:
        """The supervising boundary of one slot: every exception becomes the unit's failure."""

        async def take_serial(slot: str, chip_uid: str | None, digest: str) -> str | None:
            return await turns.take(slot, lambda: self._jobs.take_serial(
                slot=slot, chip_uid=chip_uid, manifest_digest=digest))

        try:
            await program_unit(run, programmer, take_serial=take_serial,
                               signer=self._signer)
            self._raise_if_aborted(run)  # aborted after the last programmer call returned
            if run.signature_id is not None:
                self._status.update(signing_error=None)
        except UnitFailure as failure:
            run.fail(failure, aborted=self._abort_code is not None)
            if failure.code in (FailureCode.SIGNING_REFUSED, FailureCode.SIGNER_UNREACHABLE):
                self._status.update(signing_error=f"slot {run.slot}: {failure.detail}")
        except ProgrammerError as exc:
            code = self._abort_code or exc.code
            run.fail(UnitFailure(code=code, stage=str(run.stage), detail=str(exc),
                                 region=exc.region), aborted=self._abort_code is not None)
        except Exception as exc:
            log.exception("slot %s: unexpected error in stage %s", run.slot, run.stage)
            run.fail(UnitFailure(code=FailureCode.INTERNAL, stage=str(run.stage),
                                 detail=f"{type(exc).__name__}: {exc}"))
        finally:
            turns.leave(run.slot)
            run.enter(Stage.DISCONNECT)
            try:
                await programmer.disconnect()
            except Exception:
                log.exception("slot %s: disconnect failed", run.slot)

    def _raise_if_aborted(self, run: UnitRun) -> None:
        if self._abort_code is not None:
            raise UnitFailure(code=self._abort_code, stage=str(run.stage), detail="unit aborted")

    async def _commit(self, run: UnitRun) -> None:
        records: list[UnitRecord] = []

        def build(seq: int, prev_digest: str) -> bytes:
            records.append(run.to_record(seq, prev_digest))
            return encode(records[-1])

        async with self._store.transaction() as tx:
            await self._outbox.append(tx, record_id=run.record_id, build=build)
            await self._jobs.count_unit(tx, job_id=run.plan.job.job_id, slot=run.slot,
                                        passed=run.passed)
        record = records[-1]
        log.info("unit %s slot %s serial %s: %s (record %d)", run.record_id, run.slot,
                 run.serial, record.outcome, record.seq)
        for listener in self.record_listeners:
            listener(record)

    async def _record_interrupted_units(self) -> None:
        """A unit that held a serial when the station died still gets its (failed) record."""
        for unit in await self._jobs.interrupted():
            job = await self._jobs.job(unit.job_id)
            if job is None:
                continue
            plan = UnitPlan(job=job, set_id=job.set_id, manifest_digest=unit.manifest_digest,
                            station_id=self._id)
            await self._commit(_interrupted_run(unit, plan))


def _interrupted_run(unit: InterruptedUnit, plan: UnitPlan) -> UnitRun:
    run = UnitRun(slot=unit.slot, plan=plan, serial=unit.serial, chip_uid=unit.chip_uid)
    run.fail(UnitFailure(code=FailureCode.STATION_RESTART, stage="unknown",
                         detail="the station stopped while this unit was in progress; "
                                "its serial stays consumed"), aborted=True)
    return run
