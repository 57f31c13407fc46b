"""BOOT0 and NRESET of one UART slot: how the fixture puts an STM32 into its ROM bootloader.

With BOOT0 high, a reset starts the system-memory bootloader instead of the application. The
lines are gpiozero output devices on an injected pin factory (the real one on the station, a
``MockFactory`` in tests and demos); gpiozero's global default factory is never used. A slot with
no pins configured skips boot entry: the board is assumed strapped for the bootloader.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from gpiozero import DigitalOutputDevice
from gpiozero.pins import Factory


class BootLines(Protocol):
    """What a bootloader programmer needs of its slot's BOOT0/NRESET lines.

    :class:`BootControl` drives them; a slot worker gets a stand-in that asks the station,
    which owns every GPIO line of the fixture.
    """

    async def enter_bootloader(self) -> None:
        """BOOT0 high, pulse NRESET, wait for the ROM bootloader to listen."""

    async def leave_bootloader(self, *, run_application: bool = False) -> None:
        """BOOT0 low; with ``run_application`` pulse NRESET so the new firmware starts."""


class BootControl:
    """Drives BOOT0 (active high) and NRESET (active low) for one slot."""

    def __init__(
        self,
        *,
        boot0_pin: int | None,
        nreset_pin: int | None,
        pin_factory: Factory,
        reset_pulse_s: float = 0.01,
        boot_settle_s: float = 0.05,
    ) -> None:
        self._boot0 = (
            None
            if boot0_pin is None
            else DigitalOutputDevice(boot0_pin, initial_value=False, pin_factory=pin_factory)
        )
        # active_high=False: "on" pulls NRESET low and holds the part in reset.
        self._nreset = (
            None
            if nreset_pin is None
            else DigitalOutputDevice(
                nreset_pin, active_high=False, initial_value=False, pin_factory=pin_factory
            )
        )
        self._reset_pulse_s = reset_pulse_s
        self._boot_settle_s = boot_settle_s

    @property
    def configured(self) -> bool:
        """True when at least one line is wired; otherwise every call is a no-op."""
        return self._boot0 is not None or self._nreset is not None

    async def enter_bootloader(self) -> None:
        """BOOT0 high, pulse NRESET, wait for the ROM bootloader to listen.

        With BOOT0 but no NRESET wired, BOOT0 is raised and the next power-up enters the
        bootloader; with no lines at all nothing happens.
        """
        if self._boot0 is not None:
            self._boot0.on()
        await self._pulse_reset()

    async def leave_bootloader(self, *, run_application: bool = False) -> None:
        """BOOT0 low; with ``run_application`` pulse NRESET so the new firmware starts."""
        if self._boot0 is not None:
            self._boot0.off()
        if run_application:
            await self._pulse_reset()

    def close(self) -> None:
        """Release both lines (BOOT0 low, NRESET released) and free the pins."""
        for device in (self._boot0, self._nreset):
            if device is not None:
                device.off()
                device.close()

    async def _pulse_reset(self) -> None:
        if self._nreset is None:
            return
        self._nreset.on()
        await asyncio.sleep(self._reset_pulse_s)
        self._nreset.off()
        await asyncio.sleep(self._boot_settle_s)
