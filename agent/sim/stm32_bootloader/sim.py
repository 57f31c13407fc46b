"""The simulated STM32F4 UART bootloader as one object: a board, a paced pty and fault knobs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Literal

from agent.sim.stm32_bootloader.chip import Stm32F4Chip
from agent.sim.stm32_bootloader.engine import EXTENDED_ERASE, BootloaderEngine, CommandRecord
from agent.sim.stm32_bootloader.faults import Faults
from agent.sim.stm32_bootloader.line import LineTiming, PacedPty

_FRAME_BITS = {"even": 11, "none": 10}


class Stm32BootloaderSim:
    """An STM32F40x in bootloader mode, reachable through a pty at ``link``.

    Runs on the caller's event loop. ``baud`` and ``parity`` set the emulated line rate (11 bits a
    byte for 8E1, 10 for 8N1) whatever the pty carries; ``latency_ms`` is added before every
    response. ``powered`` (DUT power as the fixture switches it) makes the part deaf while off
    and reset when power returns. ``erase_command`` 0x43 makes the part speak the legacy Erase
    instead of Extended Erase (as pre-3.0 bootloaders do), for clients that must handle both.
    """

    def __init__(
        self,
        *,
        baud: int = 115200,
        parity: Literal["even", "none"] = "even",
        latency_ms: float = 0.0,
        uid: bytes | None = None,
        erase_command: int = EXTENDED_ERASE,
        powered: Callable[[], bool] | None = None,
    ) -> None:
        self.timing = LineTiming(
            baud=baud, frame_bits=_FRAME_BITS[parity], latency_s=latency_ms / 1e3
        )
        self.faults = Faults()
        self._line = PacedPty(
            timing=self.timing, faults=self.faults, powered=powered, on_power_up=self.reset
        )
        self._engine = BootloaderEngine(
            line=self._line,
            chip=Stm32F4Chip.blank(uid),
            faults=self.faults,
            erase_command=erase_command,
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def chip(self) -> Stm32F4Chip:
        """The board currently in the fixture (flash, UID, readout protection)."""
        return self._engine.chip

    @property
    def history(self) -> list[CommandRecord]:
        """Commands served since the board was placed, oldest first."""
        return self._engine.history

    @property
    def line(self) -> PacedPty:
        """The paced pty end (its virtual wire schedule is open to inspection)."""
        return self._line

    @property
    def erase_command(self) -> int:
        """0x44 (Extended Erase, as F4 parts) or 0x43 (Erase, as pre-3.0 bootloaders)."""
        return self._engine.erase_command

    @property
    def port(self) -> str:
        """The pty slave device the link points at."""
        return self._line.slave_path

    def flash(self, address: int, size: int) -> bytes:
        """Flash contents at ``address`` (for tests; ignores readout protection)."""
        return self.chip.flash_bytes(address, size)

    async def start(self, link: Path) -> None:
        """Create the pty, symlink ``link`` to it and start serving."""
        self._line.open(link)
        self._restart()

    async def stop(self) -> None:
        """Stop serving and remove the pty and the link."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._line.close()

    def place_new_board(self, uid: bytes | None = None) -> Stm32F4Chip:
        """Swap in a factory-fresh part (new or given UID, erased, RDP off) in bootloader mode.

        The command history and the host turnarounds start afresh with it."""
        self._engine.chip = Stm32F4Chip.blank(uid)
        self._engine.history.clear()
        self._line.host_turnarounds.clear()
        self._restart()
        return self._engine.chip

    def reset(self) -> None:
        """Pulse NRESET on the same board: back to waiting for 0x7F."""
        self._restart()

    def _restart(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._line.discard_input()
        self._line.flush_host_queue()
        self._task = asyncio.get_running_loop().create_task(
            self._engine.run(), name="stm32-bootloader-sim"
        )

    @contextlib.asynccontextmanager
    async def serving(self, link: Path) -> AsyncIterator[Stm32BootloaderSim]:
        """``start(link)`` on entry, ``stop()`` on exit."""
        await self.start(link)
        try:
            yield self
        finally:
            await self.stop()
