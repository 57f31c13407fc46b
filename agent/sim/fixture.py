"""The simulated fixture: gpiozero MockFactory pins plus a simulated operator.

The station drives the same :class:`agent.hw.fixture.GpioFixture` code as on a real Pi; only the
pin factory differs. :class:`SimulatedOperator` plays the person at the fixture: it places a fresh
board in every slot, closes the lid, waits for the lamp, opens the lid and takes the board out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from gpiozero.pins.mock import MockFactory, MockPin

log = logging.getLogger(__name__)

POLL_S = 0.005


def mock_pin_factory() -> Any:
    """A fresh, private MockFactory (never installed as gpiozero's global factory)."""
    return MockFactory()


class RelayPin(MockPin):  # type: ignore[misc]
    """A mock output pin that tells listeners when its relay switches (the DUT power relay).

    Simulated boards that live outside the station's process (files another process maps) learn
    about power this way; gpiozero drives the pin exactly as it drives a real one.
    """

    def __init__(self, factory: Any, info: Any) -> None:
        super().__init__(factory, info)
        self.listeners: list[Callable[[bool], None]] = []

    def _change_state(self, value: bool) -> bool:
        changed = bool(super()._change_state(value))
        if changed:
            for listener in self.listeners:
                listener(value)
        return changed


def relay_pin(factory: Any, number: int) -> RelayPin:
    """Claim ``number`` as a relay pin (before any device opens it)."""
    pin: RelayPin = factory.pin(number, pin_class=RelayPin)
    return pin


class SimBay(Protocol):
    """A slot of the simulated fixture that can receive a new blank board."""

    def place_new_board(self) -> str:
        """Put a fresh blank board in the slot; returns its chip unique id (hex)."""


class SimulatedOperator:
    """Drives the fixture's input pins the way an operator would."""

    def __init__(self, *, factory: Any, pins: Any, bays: list[SimBay],
                 slot_lamps: dict[str, tuple[int | None, int | None]] | None = None) -> None:
        self._factory = factory
        self._pins = pins
        self._bays = bays
        self._slot_lamps = slot_lamps or {}
        # Idle fixture: lid open (sensor pulled high), interlock loop closed (low).
        self._pin(pins.clamp_sensor).drive_high()
        self._pin(pins.interlock).drive_low()

    def _pin(self, number: int) -> Any:
        return self._factory.pin(number)

    def _output(self, number: int) -> bool:
        return bool(self._pin(number).state)

    def lamp(self) -> str:
        """Which lamp is lit: 'pass', 'fail', 'busy' or 'off'."""
        for name in ("pass", "fail", "busy"):
            if self._output(getattr(self._pins, f"lamp_{name}")):
                return name
        return "off"

    def slot_lamp(self, slot: str) -> str:
        """Which of a slot's own lamps is lit: 'pass', 'fail' or 'off'."""
        pass_pin, fail_pin = self._slot_lamps.get(slot, (None, None))
        for name, pin in (("pass", pass_pin), ("fail", fail_pin)):
            if pin is not None and self._output(pin):
                return name
        return "off"

    def dut_powered(self) -> bool:
        """True while the DUT power relay is on."""
        return self._output(self._pins.dut_power)

    def clamp_engaged(self) -> bool:
        """True while the clamp actuator holds the board."""
        return self._output(self._pins.clamp_actuator)

    def close_lid(self) -> None:
        """Close the clamp lid on the board (the station's trigger)."""
        self._pin(self._pins.clamp_sensor).drive_low()

    def open_lid(self) -> None:
        """Open the lid (the board can be taken out)."""
        self._pin(self._pins.clamp_sensor).drive_high()

    def open_interlock(self) -> None:
        """Open the safety interlock (a guard door, a light curtain)."""
        self._pin(self._pins.interlock).drive_high()

    def close_interlock(self) -> None:
        """Close the safety interlock again."""
        self._pin(self._pins.interlock).drive_low()

    async def wait_until(self, predicate: Any, timeout: float = 60.0) -> None:
        """Poll the fixture's outputs until ``predicate()`` holds."""
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110 (output pins raise no events: poll)
                await asyncio.sleep(POLL_S)

    async def cycle_one(self, timeout: float = 120.0, *, place: bool = True) -> str:
        """Place boards, close the lid, wait for the verdict, take the boards out; returns the lamp.

        The station turns every lamp off once it has seen the lid open, so a lamp lit after the
        lid closes is always this unit's verdict. ``place=False``: the boards already in the
        bays (a test put particular ones there) go through.
        """
        await self.wait_until(lambda: self.lamp() == "off", timeout)
        if place:
            for bay in self._bays:
                bay.place_new_board()
        self.close_lid()
        await self.wait_until(lambda: not self.clamp_engaged() and self.lamp() in ("pass", "fail"),
                              timeout)
        verdict = self.lamp()
        self.open_lid()
        return verdict

    async def run(self, units: int, *, pause_s: float = 0.05) -> list[str]:
        """Cycle ``units`` boards through the fixture; returns each unit's lamp."""
        verdicts = []
        for _ in range(units):
            verdicts.append(await self.cycle_one())
            await asyncio.sleep(pause_s)
        return verdicts
