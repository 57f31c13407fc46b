"""A serial port's file descriptor driven straight from the event loop, for request/reply links.

A half-duplex protocol such as AN3155 spends much of its time waiting for one-byte replies, so
the host's reaction time per reply adds up over a transfer. pyserial-asyncio's StreamReader and
StreamWriter cost several event-loop iterations per exchange (a write only goes out from a
writability callback one iteration later; a read runs select() twice inside pyserial, then wakes
the waiting task one more iteration later). Here a write is one ``os.write`` made at once, and a
:meth:`SerialLink.exchange` sends each frame of a scripted conversation from the readability
callback that received the reply it waited for: the host still waits for every reply before
sending on, it only stops paying a task switch and the surrounding Python for each one.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

from agent.errors import ProbeLost

_READ_CHUNK = 4096


class Turn(NamedTuple):
    """One step of an exchange: send ``frame`` (if any), then wait for ``size`` reply bytes.

    ``checked``: the first reply byte must equal the exchange's ``go_on`` byte for the exchange
    to continue (an ACK); an unchecked reply (data) only has to arrive in full. ``label`` is the
    caller's name for the step; the link ignores it.
    """

    frame: bytes
    size: int
    limit_s: float
    checked: bool = True
    label: str = ""


class SerialLink:
    """Bytes in and out of one open, non-blocking serial port (a pyserial ``Serial``)."""

    def __init__(self, port: Any) -> None:
        self._port = port
        self._fd: int = port.fileno()
        os.set_blocking(self._fd, False)
        self._loop = asyncio.get_running_loop()
        self._received = bytearray()
        self._unsent = bytearray()
        self._script: _Script | None = None
        self._lost: str | None = None
        self._loop.add_reader(self._fd, self._on_readable)

    def write(self, data: bytes) -> None:
        """Send ``data`` now; what the port cannot take yet goes out as it drains, in order."""
        if self._lost is not None:
            return  # the next read reports why
        if self._unsent:
            self._unsent += data
            return
        try:
            sent = os.write(self._fd, data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._go_away(f"serial port write failed: {exc}")
            return
        if sent < len(data):
            self._unsent += data[sent:]
            self._loop.add_writer(self._fd, self._on_writable)

    async def read(self, count: int, limit_s: float) -> bytes:
        """Exactly ``count`` bytes; TimeoutError if they have not all arrived within ``limit_s``."""
        replies = await self.exchange([Turn(b"", count, limit_s, checked=False)], 0)
        if len(replies) < count:
            raise TimeoutError
        return replies

    async def read_any(self, limit_s: float) -> bytes:
        """Whatever has arrived (at least one byte); TimeoutError if nothing within ``limit_s``."""
        out = await self.read(1, limit_s) + self._received
        self._received.clear()
        return out

    async def exchange(self, turns: Sequence[Turn], go_on: int) -> bytes:
        """Run ``turns`` in order, each once the one before is complete; return the replies.

        The replies of all completed turns are returned back to back. The exchange ends early,
        after that byte, at a checked reply whose first byte is not ``go_on``, or when a reply is
        not complete within its turn's ``limit_s`` (a partial reply stays buffered for
        :meth:`read`). ProbeLost if the port goes away.
        """
        if self._lost is not None:
            raise ProbeLost(self._lost)
        if self._script is not None:
            raise RuntimeError("one exchange at a time on a serial link")
        waiter: asyncio.Future[None] = self._loop.create_future()
        deadline = self._loop.time() + turns[0].limit_s
        script = self._script = _Script(turns, go_on, waiter, deadline)
        script.timer = self._loop.call_at(deadline, self._on_deadline, script)
        try:
            if turns[0].frame:
                self.write(turns[0].frame)
            self._advance(script)
            await waiter
        finally:
            if script.timer is not None:
                script.timer.cancel()
            self._script = None
        return bytes(script.replies)

    def close(self) -> None:
        """Stop watching the port and close it; safe to call twice."""
        self._go_away("serial port closed")
        self._port.close()

    def _advance(self, script: _Script) -> None:
        """Take complete replies from the buffer, sending each next frame as soon as it may go."""
        received = self._received
        while received and not script.waiter.done():
            turn = script.turns[script.index]
            if turn.checked and received[0] != script.go_on:
                script.replies.append(received.pop(0))
                script.waiter.set_result(None)
                return
            if len(received) < turn.size:
                return
            script.replies += received[: turn.size]
            del received[: turn.size]
            script.index += 1
            if script.index == len(script.turns):
                script.waiter.set_result(None)
                return
            turn = script.turns[script.index]
            script.deadline = self._loop.time() + turn.limit_s  # the timer catches up lazily
            if turn.frame:
                self.write(turn.frame)

    def _on_deadline(self, script: _Script) -> None:
        """End the exchange if its current reply is overdue; else wait for the new deadline."""
        if script.waiter.done():
            return
        if self._loop.time() >= script.deadline:
            script.waiter.set_result(None)  # the exchange ends with the replies so far
        else:
            script.timer = self._loop.call_at(script.deadline, self._on_deadline, script)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, _READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EIO: the device (or the pty's other end) went away
            self._go_away(f"serial port lost: {exc}")
            return
        if not data:
            self._go_away("serial port closed")
            return
        self._received += data
        if self._script is not None:
            self._advance(self._script)

    def _on_writable(self) -> None:
        try:
            sent = os.write(self._fd, self._unsent)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._go_away(f"serial port write failed: {exc}")
            return
        del self._unsent[:sent]
        if not self._unsent:
            self._loop.remove_writer(self._fd)

    def _go_away(self, reason: str) -> None:
        """Stop all I/O; the exchange in progress and every later one raise ProbeLost."""
        if self._lost is not None:
            return
        self._lost = reason
        self._loop.remove_reader(self._fd)
        if self._unsent:
            self._loop.remove_writer(self._fd)
            self._unsent.clear()
        if self._script is not None and not self._script.waiter.done():
            self._script.waiter.set_exception(ProbeLost(reason))


class _Script:
    """One :meth:`SerialLink.exchange` in progress."""

    __slots__ = ("deadline", "go_on", "index", "replies", "timer", "turns", "waiter")

    def __init__(
        self, turns: Sequence[Turn], go_on: int, waiter: asyncio.Future[None], deadline: float
    ) -> None:
        self.turns = turns
        self.go_on = go_on
        self.waiter = waiter
        self.deadline = deadline  # for the reply now awaited
        self.timer: asyncio.TimerHandle | None = None
        self.index = 0
        self.replies = bytearray()
