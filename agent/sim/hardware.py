"""Builds the simulated fixture for a station whose config says ``fixture.backend = "sim"``.

The fixture is the real :class:`~agent.hw.fixture.GpioFixture` on MockFactory pins. Slots get a
simulated board behind their configured backend: ``sim-flash`` an in-memory target, ``pyocd`` a
virtual nRF52840 behind the ``sim`` pyOCD probe plugin, ``stm32-uart`` an AN3155 bootloader
simulator serving the slot's port path on a pty, ``usb-dfu`` a DfuSe bootloader on a simulated USB
bus that the programmer reaches as its pyusb backend. The programmers of pyocd, uart and usb-dfu
slots are the real backends: only what sits behind the probe, the port or the bus is simulated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.config import DfuSlot, PyOcdSlot, SimFlashSlot, StationConfig, UartSlot
from agent.hw.fixture import GpioFixture
from agent.hw.programmer import Programmer
from agent.sim.fixture import SimBay, SimulatedOperator, mock_pin_factory, relay_pin
from agent.sim.flash_target import SimFlashBay, SimFlashProgrammer

BuildProgrammer = Callable[..., Programmer]


@dataclass
class SimulatedFixture:
    """The simulated devices of a station: pins, operator, one bay per slot."""

    factory: Any
    operator: SimulatedOperator
    bays: dict[str, SimBay]
    closers: list[Callable[[], Any]] = field(default_factory=list)
    usb_bus: Any = None  # the simulated USB bus of the usb-dfu slots, if any

    async def close(self) -> None:
        """Stop simulators that serve ports."""
        for close in self.closers:
            result = close()
            if hasattr(result, "__await__"):
                await result


async def build_simulated_hardware(
    config: StationConfig, build_programmer: BuildProgrammer
) -> tuple[GpioFixture, dict[str, Programmer], SimulatedFixture]:
    """The fixture, the slots' programmers and the simulated devices behind them."""
    factory = mock_pin_factory()
    pins = config.fixture.pins
    relay = relay_pin(factory, pins.dut_power)
    fixture = GpioFixture(
        pins=pins,
        pin_factory=factory,
        bounce_ms=config.fixture.clamp_bounce_ms,
        settle_ms=config.fixture.clamp_settle_ms,
        slot_lamps=config.slot_lamps(),
    )

    def powered() -> bool:
        return bool(factory.pin(pins.dut_power).state)

    programmers: dict[str, Programmer] = {}
    bays: dict[str, SimBay] = {}
    closers: list[Callable[[], Any]] = []
    usb_bus = None
    for slot in config.slots:
        if isinstance(slot, SimFlashSlot):
            bay = SimFlashBay(flash_size=slot.flash_size, page_size=slot.page_size, powered=powered)
            bays[slot.name] = bay
            faults = {fault.sha256: fault.rate for fault in config.simulation.faults}
            programmers[slot.name] = SimFlashProgrammer(bay, op_delay_s=slot.op_delay_ms / 1000,
                                                        faults=faults)
        elif isinstance(slot, PyOcdSlot):
            from agent.sim.nrf52840.bay import Nrf52840Bay

            nrf_bay = Nrf52840Bay.for_slot(slot, config.simulation)
            nrf_bay.switch_power(bool(relay.state))
            relay.listeners.append(nrf_bay.switch_power)
            bays[slot.name] = nrf_bay
            programmers[slot.name] = build_programmer(slot, pin_factory=factory,
                                                      workers=config.fixture.slot_workers)
        elif isinstance(slot, UartSlot):
            from agent.sim.stm32_bootloader.bay import Stm32Bay

            uart_bay = await Stm32Bay.start_for_slot(slot, powered=powered)
            closers.append(uart_bay.stop)
            bays[slot.name] = uart_bay
            programmers[slot.name] = build_programmer(slot, pin_factory=factory,
                                                      workers=config.fixture.slot_workers)
        elif isinstance(slot, DfuSlot):
            from agent.sim.stm32_dfu import SimUsbBus
            from agent.sim.stm32_dfu.bay import DfuBay

            usb_bus = usb_bus or SimUsbBus()
            bays[slot.name] = DfuBay.for_slot(slot, bus=usb_bus, factory=factory,
                                              powered=powered, simulation=config.simulation)
            programmers[slot.name] = build_programmer(slot, pin_factory=factory,
                                                      usb_backend=usb_bus)
    operator = SimulatedOperator(factory=factory, pins=pins, bays=list(bays.values()),
                                 slot_lamps=config.slot_lamps())
    return (
        fixture,
        programmers,
        SimulatedFixture(factory=factory, operator=operator, bays=bays, closers=closers,
                         usb_bus=usb_bus),
    )
