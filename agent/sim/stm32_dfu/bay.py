"""A usb-dfu slot of the simulated fixture: a simulated STM32F4 on the station's simulated USB bus.

The slot's board sits at the slot's ``usb_path`` (or the next free port of the hub), follows the
fixture's DUT power and the slot's BOOT0/NRESET pins, and keeps real-chip time when the station's
``simulation.timing`` (or ``FIXTURE_AGENT_SIM_TIMING``) asks for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.config import DfuSlot, SimulationSection
from agent.errors import ConfigError
from agent.sim.nrf52840 import settings
from agent.sim.stm32_dfu.backend import SimUsbBus
from agent.sim.stm32_dfu.board import DfuBoard
from agent.sim.stm32_dfu.descriptors import PID, VID
from agent.sim.stm32_dfu.device import BootLines, SimDfuDevice
from agent.sim.stm32_dfu.timing import DfuTiming


class DfuBay:
    """Holds one simulated board on the bus; implements the fixture's SimBay."""

    def __init__(self, device: SimDfuDevice, *, serial: str | None = None) -> None:
        self.device = device
        self._serial = serial

    @classmethod
    def for_slot(
        cls,
        slot: DfuSlot,
        *,
        bus: SimUsbBus,
        factory: Any,
        powered: Callable[[], bool],
        simulation: SimulationSection,
    ) -> DfuBay:
        """The bay of ``slot``; its board answers as the slot's selector expects."""
        if (slot.vid, slot.pid) != (VID, PID):
            raise ConfigError("slots", [f"slot {slot.name}: the simulated DFU device is "
                                        f"{VID:04x}:{PID:04x}, not {slot.vid:04x}:{slot.pid:04x}"])
        lines = None
        if slot.boot0_pin is not None or slot.nreset_pin is not None:
            lines = BootLines(factory, boot0=slot.boot0_pin, nreset=slot.nreset_pin)
        device = SimDfuDevice(
            port_numbers=_ports(slot, bus),
            board=DfuBoard.blank(serial=slot.serial),
            lines=lines,
            powered=powered,
            timing=DfuTiming(enabled=simulation.timing or settings.timing_enabled()),
        )
        bus.attach(device)
        return cls(device, serial=slot.serial)

    def place_new_board(self) -> str:
        """Put a fresh blank board in the slot; returns its unique id as hex."""
        board = DfuBoard.blank(serial=self._serial)
        self.device.place_new_board(board)
        return board.chip.uid.hex()


def _ports(slot: DfuSlot, bus: SimUsbBus) -> tuple[int, ...]:
    """The hub port of the slot: its usb_path, else the next free port of hub 1."""
    if slot.usb_path is None:
        taken = {device.port_numbers for device in bus.devices}
        return next((1, port) for port in range(1, 128) if (1, port) not in taken)
    bus_text, _, ports = slot.usb_path.partition("-")
    if int(bus_text) != bus.bus_number:
        raise ConfigError("slots", [f"slot {slot.name}: usb_path {slot.usb_path} is not on the "
                                    f"simulated bus {bus.bus_number}"])
    return tuple(int(port) for port in ports.split("."))
