"""Fixture I/O: clamp sensor, clamp actuator, DUT power relay, safety interlock and lamps.

:class:`GpioFixture` drives them through gpiozero with an explicit pin factory: ``None`` on a real
Pi (gpiozero's default factory), a ``MockFactory`` in the simulated fixture. gpiozero's global
factory is never touched, so tests and stations cannot leak pins into each other.

Safety: opening the interlock cuts DUT power *in gpiozero's callback thread*, before the event loop
even hears about it; the loop is told afterwards (``call_soon_threadsafe``) so it can abort the
unit. ``safe_state`` (power off, clamp released) is idempotent and safe to call from anywhere.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

from gpiozero import LED, Button, DigitalOutputDevice

from agent.errors import AgentError, FailureCode

log = logging.getLogger(__name__)


class Lamp(StrEnum):
    """What the operator sees on the fixture's lamp tower."""

    OFF = "off"
    BUSY = "busy"
    PASS = "pass"  # noqa: S105 (a lamp, not a password)
    FAIL = "fail"


class FixtureFault(AgentError):
    """The fixture refused an action (e.g. power on with the interlock open)."""

    def __init__(self, message: str, *, code: FailureCode = FailureCode.FIXTURE_FAULT) -> None:
        self.code = code
        super().__init__(message)


class Fixture(Protocol):
    """What the station needs from the fixture."""

    async def wait_for_board(self) -> None:
        """Return once the clamp is closed, has stayed closed, and the interlock is closed."""

    async def wait_for_removal(self) -> None:
        """Return once the clamp sensor shows open (the board can be taken out)."""

    def interlock_closed(self) -> bool:
        """True while the safety interlock loop is closed."""

    def on_interlock_open(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the loop when the interlock opens (power is already off)."""

    def engage_clamp(self) -> None:
        """Lock the clamp on the board."""

    def power_on(self) -> None:
        """Switch DUT power on; refuses while the interlock is open."""

    def safe_state(self) -> None:
        """DUT power off, clamp released. Idempotent."""

    def show(self, lamp: Lamp) -> None:
        """Light exactly one lamp (or none); OFF also turns every slot's lamps off."""

    def show_slot(self, slot: str, lamp: Lamp) -> None:
        """Light a slot's own PASS or FAIL lamp, where the fixture has one (else nothing)."""

    def close(self) -> None:
        """Enter the safe state and release the pins."""


class GpioFixture:
    """The fixture on real (or mock) GPIO pins through gpiozero."""

    def __init__(
        self,
        *,
        pins: Any,
        pin_factory: Any = None,
        bounce_ms: int = 20,
        settle_ms: int = 150,
        slot_lamps: dict[str, tuple[int | None, int | None]] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._settle_s = settle_ms / 1000
        bounce = bounce_ms / 1000 if bounce_ms else None
        factory = {"pin_factory": pin_factory}
        # Sensors close to ground against the pull-up: closed reads as "pressed".
        self._clamp_sensor = Button(pins.clamp_sensor, pull_up=True, bounce_time=bounce, **factory)
        self._interlock = Button(pins.interlock, pull_up=True, **factory)
        self._power = DigitalOutputDevice(pins.dut_power, initial_value=False, **factory)
        self._clamp = DigitalOutputDevice(pins.clamp_actuator, initial_value=False, **factory)
        self._lamps = {
            Lamp.PASS: LED(pins.lamp_pass, **factory),
            Lamp.FAIL: LED(pins.lamp_fail, **factory),
            Lamp.BUSY: LED(pins.lamp_busy, **factory),
        }
        # A panel's per-slot PASS/FAIL lamps (optional): the X-out an operator acts on.
        self._slot_lamps = {
            slot: {lamp: LED(pin, **factory)
                   for lamp, pin in ((Lamp.PASS, pass_pin), (Lamp.FAIL, fail_pin))
                   if pin is not None}
            for slot, (pass_pin, fail_pin) in (slot_lamps or {}).items()}
        self._changed = asyncio.Event()
        self._interlock_callbacks: list[Callable[[], None]] = []
        self._clamp_sensor.when_pressed = self._from_thread(self._changed.set)
        self._clamp_sensor.when_released = self._from_thread(self._changed.set)
        self._interlock.when_released = self._interlock_opened
        self._interlock.when_pressed = self._from_thread(self._changed.set)

    def _from_thread(self, func: Callable[[], None]) -> Callable[[], None]:
        def relay() -> None:
            self._loop.call_soon_threadsafe(func)

        return relay

    def _interlock_opened(self) -> None:
        # Runs in gpiozero's thread: cut power first, tell the loop second.
        self._power.off()
        self._loop.call_soon_threadsafe(self._notify_interlock)

    def _notify_interlock(self) -> None:
        log.warning("safety interlock opened: DUT power cut")
        self._changed.set()
        for callback in self._interlock_callbacks:
            callback()

    async def _wait_change(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    async def wait_for_board(self) -> None:
        while True:
            if self._clamp_sensor.is_pressed and self._interlock.is_pressed:
                await asyncio.sleep(self._settle_s)  # a clamp that bounced open is not a board
                if self._clamp_sensor.is_pressed and self._interlock.is_pressed:
                    return
                continue
            await self._wait_change()

    async def wait_for_removal(self) -> None:
        while self._clamp_sensor.is_pressed:
            await self._wait_change()

    def interlock_closed(self) -> bool:
        return bool(self._interlock.is_pressed)

    def on_interlock_open(self, callback: Callable[[], None]) -> None:
        self._interlock_callbacks.append(callback)

    def engage_clamp(self) -> None:
        self._clamp.on()

    def power_on(self) -> None:
        if not self._interlock.is_pressed:
            raise FixtureFault("DUT power refused: safety interlock is open",
                               code=FailureCode.INTERLOCK_OPEN)
        self._power.on()

    def safe_state(self) -> None:
        self._power.off()
        self._clamp.off()

    def show(self, lamp: Lamp) -> None:
        for which, led in self._lamps.items():
            led.value = which is lamp
        if lamp is Lamp.OFF:
            for leds in self._slot_lamps.values():
                for led in leds.values():
                    led.off()

    def show_slot(self, slot: str, lamp: Lamp) -> None:
        for which, led in self._slot_lamps.get(slot, {}).items():
            led.value = which is lamp

    def close(self) -> None:
        self.safe_state()
        self.show(Lamp.OFF)
        slot_leds = [led for leds in self._slot_lamps.values() for led in leds.values()]
        for device in (self._clamp_sensor, self._interlock, self._power, self._clamp,
                       *self._lamps.values(), *slot_leds):
            device.close()
