"""The station's side of a slot worker: a :class:`~agent.hw.programmer.Programmer` whose calls run
in the slot's own process (see :mod:`agent.station.workers.child`).

pyOCD builds every debug transfer in Python: in one process, N slots queue on one GIL, and a slot
that hangs or crashes in native code takes the station with it. Here each slot has a process:

* **Crash**: a worker that dies mid-call (SIGKILL, segfault, OOM) fails that call with
  ``worker_crashed``; only its slot's unit fails. A fresh worker is started at once, warmed up
  for the last target, and serves the next unit.
* **Abort**: the worker is told to abort; from then until the next ``connect`` every call of the
  unit fails, even one that returns normally (it ran past the abort and counts for nothing). A
  worker that has not answered within ``ABORT_GRACE_S`` is killed.
* **Fixture lines**: BOOT0/NRESET stay in the station's process (it owns every GPIO line); the
  worker asks for them over the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import socket
from typing import Any

from agent.config import PyOcdSlot, UartSlot
from agent.errors import ProgrammerAborted, ProgrammerError, WorkerCrashed
from agent.hw.boot_control import BootControl
from agent.hw.programmer import Connection, ConnectOptions, Region, ValidFlag
from agent.station.workers.channel import (
    Abort,
    Call,
    Channel,
    ErrorInfo,
    Failed,
    FixtureDone,
    FixtureRequest,
    Ready,
    Result,
    Stop,
)
from agent.station.workers.child import run_worker

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0  # spawn, imports and probe discovery on a slow Pi, 8 at once
ABORT_GRACE_S = 3.0  # an aborted call must end within this, or its worker is killed
STOP_GRACE_S = 5.0
FIXTURE_ACTIONS = frozenset({"enter_bootloader", "leave_bootloader"})  # what a worker may ask


class _Worker:
    """One running worker process and its channel."""

    def __init__(self, process: Any, channel: Channel) -> None:
        self.process = process
        self.channel = channel
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.alive = True
        self.reader: asyncio.Task[None] | None = None

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()


class WorkerProgrammer:
    """The programmer of one slot, running in a worker process of its own."""

    def __init__(self, *, slot: PyOcdSlot | UartSlot, boot: BootControl | None = None) -> None:
        self._slot = slot
        self._boot = boot
        self._ids = itertools.count(1)
        self._worker: _Worker | None = None
        self._starting: asyncio.Task[_Worker] | None = None
        self._target: ConnectOptions | None = None  # what a restarted worker warms up for
        self._aborted = False
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pid(self) -> int | None:
        """The worker's process id (for tests and the status), None while there is none."""
        worker = self._worker
        return worker.process.pid if worker is not None and worker.alive else None

    # --- the Programmer protocol -------------------------------------------------------------

    async def prepare(self, options: ConnectOptions | None) -> None:
        """Start the worker if needed and warm it up for ``options`` (imports, discovery)."""
        self._target = options
        await self._call("prepare", options)

    async def connect(self, options: ConnectOptions) -> Connection:
        """A new unit: aborts of the last one no longer apply."""
        self._aborted = False
        result: Connection = await self._call("connect", options)
        return result

    async def read_unique_id(self) -> str:
        """The chip's unique id."""
        result: str = await self._call("read_unique_id")
        return result

    async def erase(self, region: Region) -> None:
        """Erase the region's pages."""
        await self._call("erase", region)

    async def write(self, region: Region, data: bytes) -> None:
        """Program the region."""
        await self._call("write", region, data)

    async def read(self, region: Region) -> bytes:
        """Read the region back."""
        result: bytes = await self._call("read", region)
        return result

    async def set_valid_flag(self, flag: ValidFlag) -> None:
        """Write the valid marker."""
        await self._call("set_valid_flag", flag)

    async def lock(self) -> None:
        """Lock the part (proven by the backend)."""
        await self._call("lock")

    async def disconnect(self) -> None:
        """Close the link; nothing to do when the worker is gone (a fresh one starts clean)."""
        worker = self._worker
        if worker is None or not worker.alive:
            return
        with contextlib.suppress(ProgrammerError):
            await self._call("disconnect", cleanup=True)

    async def abort(self) -> None:
        """Fail the unit's operations now; kill the worker if it does not let go in time."""
        self._aborted = True
        worker = self._worker
        if worker is None or not worker.alive:
            return
        with contextlib.suppress(ConnectionError, EOFError):
            await worker.channel.send(Abort())
        self._background(self._enforce_abort(worker))

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker now (the station does this for every slot before its first board)."""
        await self._running()

    async def close(self) -> None:
        """Stop the worker (bounded), at station exit."""
        for task in list(self._tasks):
            task.cancel()
        self._closed = True  # a worker that ends now is not lost: it was told to stop
        worker, self._worker = self._worker, None
        if worker is None:
            return
        worker.alive = False
        with contextlib.suppress(ConnectionError, EOFError, OSError):
            await worker.channel.send(Stop())
        await asyncio.to_thread(worker.process.join, STOP_GRACE_S)
        worker.kill()
        worker.channel.close()
        if worker.reader is not None:
            worker.reader.cancel()

    # --- internals ----------------------------------------------------------------------------

    async def _call(self, method: str, *args: Any, cleanup: bool = False) -> Any:
        """Run one call in the worker. ``cleanup`` calls (disconnect, re-prepare) are not
        turned into aborts: they are how a unit ends after one."""
        worker = await self._running()
        call_id = next(self._ids)
        reply = worker.pending[call_id] = asyncio.get_running_loop().create_future()
        try:
            try:
                await worker.channel.send(Call(call_id, method, args))
            except (ConnectionError, EOFError):
                self._lost(worker)  # fails ``reply`` with the crash
            value = await reply
        except ProgrammerError as error:
            if self._aborted and not cleanup and not isinstance(error, ProgrammerAborted):
                raise ProgrammerAborted(f"{method}: aborted ({error.detail})",
                                        region=error.region) from error
            raise
        finally:
            worker.pending.pop(call_id, None)
        if self._aborted and not cleanup:
            raise ProgrammerAborted(f"{method}: aborted while it ran")
        return value

    async def _running(self) -> _Worker:
        if self._closed:
            raise WorkerCrashed(f"slot {self._slot.name}: the station is stopping")
        if self._worker is not None and self._worker.alive:
            return self._worker
        if self._starting is None or self._starting.done():
            self._starting = asyncio.get_running_loop().create_task(self._spawn())
        return await asyncio.shield(self._starting)

    async def _spawn(self) -> _Worker:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        process = multiprocessing.get_context("spawn").Process(
            target=run_worker, args=(theirs, self._slot, self._boot is not None),
            name=f"slot-{self._slot.name}", daemon=True)
        try:
            await asyncio.to_thread(process.start)
        finally:
            theirs.close()
        channel = await Channel.over(ours)
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                ready = await channel.receive()
        except (TimeoutError, EOFError) as error:
            process.kill()
            channel.close()
            raise WorkerCrashed(f"slot {self._slot.name}: worker did not start ({error})") from None
        if not isinstance(ready, Ready):
            process.kill()
            raise WorkerCrashed(f"slot {self._slot.name}: worker said {ready!r} at start")
        worker = _Worker(process, channel)
        worker.reader = asyncio.get_running_loop().create_task(
            self._read(worker), name=f"worker-{self._slot.name}")
        self._worker = worker
        log.info("slot %s: worker %d ready", self._slot.name, process.pid)
        if self._target is not None:
            await self._call("prepare", self._target, cleanup=True)
        return worker

    async def _read(self, worker: _Worker) -> None:
        try:
            while True:
                message = await worker.channel.receive()
                if isinstance(message, Result | Failed):
                    waiter = worker.pending.get(message.call_id)
                    if waiter is None or waiter.done():
                        continue
                    if isinstance(message, Result):
                        waiter.set_result(message.value)
                    else:
                        waiter.set_exception(message.error.rebuild())
                elif isinstance(message, FixtureRequest):
                    self._background(self._fixture(worker, message))
        except EOFError:
            self._lost(worker)
        except Exception:  # a garbled frame: this worker cannot be trusted any more
            log.exception("slot %s: bad message from the worker", self._slot.name)
            self._lost(worker)

    def _lost(self, worker: _Worker) -> None:
        """The worker has gone: fail what it was doing, and start a fresh one for the next unit."""
        if not worker.alive:
            return
        worker.alive = False
        worker.kill()
        code = worker.process.exitcode
        log.warning("slot %s: worker %s ended (exit code %s)", self._slot.name,
                    worker.process.pid, code)
        for waiter in worker.pending.values():
            if not waiter.done():
                waiter.set_exception(self._crash_error("call", exit_code=code))
        if self._worker is worker:
            self._worker = None
            self._background(self._restart())

    def _crash_error(self, method: str, *, exit_code: int | None = None) -> ProgrammerError:
        if self._aborted:
            return ProgrammerAborted(f"{method}: aborted (the worker was stopped)")
        how = f" (exit code {exit_code})" if exit_code is not None else ""
        return WorkerCrashed(f"{method}: slot {self._slot.name}'s worker process died{how}")

    async def _restart(self) -> None:
        try:
            await self._running()
        except ProgrammerError as error:
            log.error("slot %s: %s (retried at the next unit)", self._slot.name, error)  # noqa: TRY400

    async def _enforce_abort(self, worker: _Worker) -> None:
        await asyncio.sleep(ABORT_GRACE_S)
        if worker.alive and worker.pending:
            log.warning("slot %s: worker did not let go %.0f s after the abort: killing it",
                        self._slot.name, ABORT_GRACE_S)
            worker.kill()

    async def _fixture(self, worker: _Worker, request: FixtureRequest) -> None:
        error = None
        if self._boot is None or request.action not in FIXTURE_ACTIONS:
            error = ErrorInfo.of(ProgrammerError(f"no fixture action {request.action!r} for "
                                                 f"slot {self._slot.name}"))
        else:
            try:
                await getattr(self._boot, request.action)(**request.kwargs)
            except ProgrammerError as failure:
                error = ErrorInfo.of(failure)
        with contextlib.suppress(ConnectionError, EOFError):
            await worker.channel.send(FixtureDone(request.request_id, error))

    def _background(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
