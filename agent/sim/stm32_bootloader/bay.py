"""A UART slot of the simulated fixture: the bootloader simulator serving the slot's port path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agent.config import UartSlot
from agent.sim.stm32_bootloader.sim import Stm32BootloaderSim


class Stm32Bay:
    """Holds one simulated STM32F4 board at ``slot.port``; implements the fixture's SimBay."""

    def __init__(self, sim: Stm32BootloaderSim) -> None:
        self.sim = sim

    @classmethod
    async def start_for_slot(
        cls,
        slot: UartSlot,
        *,
        powered: Callable[[], bool],
        latency_ms: float = 0.0,
    ) -> Stm32Bay:
        """Serve a blank board at the slot's port path, at the slot's baud rate, gated by power.

        The emulated framing follows ``slot.parity`` (8E1 for "even") even though the pty itself
        carries no parity; the programmer must open it with parity "none".
        """
        sim = Stm32BootloaderSim(
            baud=slot.baud, parity=slot.parity, latency_ms=latency_ms, powered=powered
        )
        await sim.start(Path(slot.port))
        return cls(sim)

    def place_new_board(self) -> str:
        """Put a fresh blank board in the slot; returns its unique id as hex."""
        return self.sim.place_new_board().uid.hex()

    async def stop(self) -> None:
        """Stop serving and remove the port link."""
        await self.sim.stop()
