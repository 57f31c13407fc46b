"""The simulator's end of a pseudo-terminal, with the UART's timing put back in.

A pty moves bytes as fast as the kernel copies them, so a bootloader on a pty would look hundreds
of times faster than the same bootloader on a 115200-baud UART. This line restores the physics:
received bytes count as arrived only once their frames would have crossed the wire, and every
response leaves after a turnaround latency and is released at line rate, a chunk at a time. Times
are absolute (a virtual schedule), so scheduler lateness never accumulates into drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.sim.stm32_bootloader.faults import Faults

# Release output in pieces of about this much line time: one timer per piece, not per byte.
_CHUNK_S = 0.001
# Host turnarounds kept for inspection (the newest; a 1 MiB image needs about 25,000).
_TURNAROUND_SAMPLES = 100_000


@dataclass(frozen=True, slots=True)
class LineTiming:
    """Emulated UART: ``frame_bits`` is 11 for 8E1 (start, 8 data, parity, stop), 10 for 8N1."""

    baud: int = 115200
    frame_bits: int = 11
    latency_s: float = 0.0

    @property
    def byte_time(self) -> float:
        """Seconds one byte occupies on the wire."""
        return self.frame_bits / self.baud


class PacedPty:
    """A pty master that reads and writes bytes on an emulated UART's schedule."""

    def __init__(
        self,
        *,
        timing: LineTiming,
        faults: Faults,
        powered: Callable[[], bool] | None = None,
        on_power_up: Callable[[], None] | None = None,
    ) -> None:
        self.timing = timing
        self._faults = faults
        self._powered = powered
        self._on_power_up = on_power_up
        self._was_unpowered = False
        self._master = -1
        self._slave = -1
        self._link: Path | None = None
        self._chunks: deque[tuple[bytes, float]] = deque()  # data, wire time its first byte began
        self._offset = 0  # bytes of the first chunk already consumed
        self._buffered = 0
        self._data_ready = asyncio.Event()
        self._rx_free = 0.0  # when the receive wire is next idle (virtual)
        self._tx_free = 0.0
        self._last_rx_done = 0.0  # when the last consumed byte finished arriving (virtual)
        self._replied_at: float | None = None  # when the last response byte went into the pty
        self.host_turnarounds: deque[float] = deque(maxlen=_TURNAROUND_SAMPLES)
        """Seconds from each response's last byte entering the pty to the host's next byte
        coming out of it: the host's reaction plus the pty's delivery both ways. The pty and the
        simulator are the same whoever the host is, so differences between hosts are theirs."""

    @property
    def slave_path(self) -> str:
        """The pty slave device, e.g. /dev/pts/7."""
        return os.ttyname(self._slave)

    @property
    def last_rx_done(self) -> float:
        """Loop time at which the last byte the device consumed had fully arrived."""
        return self._last_rx_done

    @property
    def tx_idle_at(self) -> float:
        """Loop time at which the last response byte has left the wire."""
        return self._tx_free

    def open(self, link: Path) -> None:
        """Create the pty, point ``link`` at its slave and start receiving."""
        self._master, self._slave = os.openpty()
        # Keep the slave open ourselves: the master then never sees EOF/EIO between clients, and
        # raw mode set here (no echo, no line editing) persists for every client that opens it.
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(self.slave_path)
        self._link = link
        asyncio.get_running_loop().add_reader(self._master, self._on_readable)

    def close(self) -> None:
        """Stop receiving, remove the link and close both pty ends."""
        if self._master < 0:
            return
        asyncio.get_running_loop().remove_reader(self._master)
        if self._link is not None:
            with contextlib.suppress(FileNotFoundError):
                self._link.unlink()
        os.close(self._master)
        os.close(self._slave)
        self._master = self._slave = -1

    def discard_input(self) -> None:
        """Forget received bytes that the device has not consumed (it reset)."""
        self._chunks.clear()
        self._offset = self._buffered = 0
        self._data_ready.clear()

    def flush_host_queue(self) -> None:
        """Drop bytes the host has not read yet (a new board: nothing stale may reach the host)."""
        if self._slave >= 0:
            termios.tcflush(self._slave, termios.TCIFLUSH)

    async def read(self, count: int) -> bytes:
        """The next ``count`` received bytes; notes when the last of them finished arriving."""
        while self._buffered < count:
            self._data_ready.clear()
            await self._data_ready.wait()
        out = bytearray()
        while len(out) < count:
            data, began = self._chunks[0]
            take = min(count - len(out), len(data) - self._offset)
            out += data[self._offset : self._offset + take]
            self._offset += take
            self._last_rx_done = began + self._offset * self.timing.byte_time
            if self._offset == len(data):
                self._chunks.popleft()
                self._offset = 0
        self._buffered -= count
        return bytes(out)

    async def send(self, data: bytes) -> None:
        """Answer the last request: after the turnaround latency, at line rate."""
        data = self._faults.filter_tx(data)
        loop = asyncio.get_running_loop()
        byte_time = self.timing.byte_time
        start = max(self._last_rx_done + self.timing.latency_s, self._tx_free)
        self._tx_free = start + len(data) * byte_time
        step = max(1, int(_CHUNK_S / byte_time))
        for first in range(0, len(data), step):
            chunk = data[first : first + step]
            delay = start + (first + len(chunk)) * byte_time - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._write_all(chunk)
        if data:
            self._replied_at = loop.time()

    async def _write_all(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            try:
                written = os.write(self._master, view)
            except BlockingIOError:
                written = 0
            view = view[written:]
            if view:  # the host is not reading: wait like a UART with a full FIFO
                await asyncio.sleep(self.timing.byte_time * len(view))

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO while no process holds the slave; we hold it, so only at close
            return
        if self._powered is not None and not self._powered():
            self._was_unpowered = True  # an unpowered part hears nothing
            return
        if self._was_unpowered and self._on_power_up is not None:
            self._was_unpowered = False
            self._on_power_up()  # power-on reset: the part waits for 0x7F again
        data = self._faults.filter_rx(data)
        if not data:
            return
        now = asyncio.get_running_loop().time()
        if self._replied_at is not None:
            self.host_turnarounds.append(now - self._replied_at)
            self._replied_at = None
        began = max(now, self._rx_free)
        self._rx_free = began + len(data) * self.timing.byte_time
        self._chunks.append((data, began))
        self._buffered += len(data)
        self._data_ready.set()
