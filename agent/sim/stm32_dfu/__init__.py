"""A simulated STM32F4 in its USB-DFU ROM bootloader (DFU 1.1 + DfuSe) behind pyusb's backend
interface, with a switchable timing model and fault injection.

``SimUsbBus`` is a ``usb.backend.IBackend``: hand it to ``usb.core.find(backend=...)`` (or to the
DFU programmer as ``usb_backend``) and the unchanged client talks to the ``SimDfuDevice`` boards
plugged into it.
"""

from agent.sim.stm32_dfu.backend import SimUsbBus
from agent.sim.stm32_dfu.board import DfuBoard
from agent.sim.stm32_dfu.device import BootLines, SimDfuDevice
from agent.sim.stm32_dfu.engine import Operation
from agent.sim.stm32_dfu.faults import DfuFaults
from agent.sim.stm32_dfu.timing import DfuTiming

__all__ = [
    "BootLines",
    "DfuBoard",
    "DfuFaults",
    "DfuTiming",
    "Operation",
    "SimDfuDevice",
    "SimUsbBus",
]
