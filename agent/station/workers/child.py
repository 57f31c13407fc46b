"""A slot's worker process: one programmer, served to the station over the channel.

Started with ``spawn`` (a fresh interpreter: no state, threads or locks inherited from the station),
it builds the slot's real backend, warms it up (imports, probe discovery) and says Ready. Calls run
as tasks on its own event loop, so an Abort is taken while an operation is in flight. The fixture's
GPIO stays with the station: BOOT0/NRESET requests go back over the channel. The process dies with
the station (``PR_SET_PDEATHSIG``) and when the channel closes, so a worker never outlives it
holding a probe.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import logging
import os
import signal
import socket
from typing import Any

from agent.config import PyOcdSlot, UartSlot
from agent.hw.programmer import Programmer
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

log = logging.getLogger(__name__)
CALLS = frozenset({"prepare", "connect", "read_unique_id", "erase", "write", "read",
                   "set_valid_flag", "lock", "disconnect"})
_PR_SET_PDEATHSIG = 1
# Workers yield the CPU to the station: its event loop carries the interlock, the fixture's GPIO,
# MQTT keepalives and every slot's channel. On a panel with more slots than cores, equal priority
# let N busy workers starve it (loop lag p99 of 58 ms with 8 CPU-bound slots on 2 cores).
WORKER_NICE_INCREMENT = 5


class RemoteBootLines:
    """BOOT0/NRESET of this slot, driven by the station on the worker's behalf."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[ErrorInfo | None]] = {}

    async def enter_bootloader(self) -> None:
        """Ask the station: BOOT0 high, pulse NRESET."""
        await self._ask("enter_bootloader", {})

    async def leave_bootloader(self, *, run_application: bool = False) -> None:
        """Ask the station: BOOT0 low (and pulse NRESET to start the application)."""
        await self._ask("leave_bootloader", {"run_application": run_application})

    async def _ask(self, action: str, kwargs: dict[str, Any]) -> None:
        request_id = next(self._ids)
        done = self._waiting[request_id] = asyncio.get_running_loop().create_future()
        try:
            await self._channel.send(FixtureRequest(request_id, action, kwargs))
            error = await done
        finally:
            self._waiting.pop(request_id, None)
        if error is not None:
            raise error.rebuild()

    def done(self, message: FixtureDone) -> None:
        """The station answered a request."""
        waiter = self._waiting.get(message.request_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(message.error)


def build_backend(slot: PyOcdSlot | UartSlot, *, boot: RemoteBootLines | None) -> Programmer:
    """The slot's real backend, as the station would build it in-process."""
    if isinstance(slot, PyOcdSlot):
        from agent.hw.pyocd_programmer import PyOcdProgrammer

        return PyOcdProgrammer(probe_id=slot.probe, frequency_hz=slot.frequency_hz)
    from agent.hw.stm32_uart import Stm32UartProgrammer

    return Stm32UartProgrammer(port=slot.port, baud=slot.baud, parity=slot.parity, boot=boot)


def run_worker(sock: socket.socket, slot: PyOcdSlot | UartSlot, boot_lines: bool) -> None:
    """The process's main (the target ``multiprocessing`` spawns)."""
    _die_with_parent()
    os.nice(WORKER_NICE_INCREMENT)
    logging.basicConfig(level=logging.WARNING,
                        format=f"%(asctime)s %(levelname)s worker[{slot.name}] %(name)s: "
                               "%(message)s")
    asyncio.run(_serve(sock, slot, boot_lines))


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the station dies, even mid-call in native code."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        log.warning("cannot ask to die with the station; relying on the channel closing")


async def _serve(sock: socket.socket, slot: PyOcdSlot | UartSlot, boot_lines: bool) -> None:
    channel = await Channel.over(sock)
    boot = RemoteBootLines(channel) if boot_lines else None
    programmer = build_backend(slot, boot=boot)
    await programmer.prepare(None)
    await channel.send(Ready(pid=os.getpid()))
    tasks: set[asyncio.Task[None]] = set()

    def start(work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    try:
        while True:
            message = await channel.receive()
            if isinstance(message, Call):
                start(_call(channel, programmer, message))
            elif isinstance(message, Abort):
                start(programmer.abort())
            elif isinstance(message, FixtureDone) and boot is not None:
                boot.done(message)
            elif isinstance(message, Stop):
                break
    except EOFError:
        pass  # the station has gone
    finally:
        for task in tasks:
            task.cancel()
        shutdown = getattr(programmer, "shutdown", None)
        if shutdown is not None:
            shutdown()
        channel.close()


async def _call(channel: Channel, programmer: Programmer, call: Call) -> None:
    if call.method not in CALLS:
        await channel.send(Failed(call.call_id, ErrorInfo.of(
            ValueError(f"no programmer call {call.method!r}"))))
        return
    try:
        value = await getattr(programmer, call.method)(*call.args)
    except Exception as error:  # the supervising boundary of one call: it becomes data
        log.debug("%s failed", call.method, exc_info=True)
        await channel.send(Failed(call.call_id, ErrorInfo.of(error)))
        return
    await channel.send(Result(call.call_id, value))
