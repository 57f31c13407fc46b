"""A simulated STM32F4 ROM bootloader (AN3155) on a pty, with UART timing and fault injection.

``Stm32BootloaderSim`` runs in-process on the event loop (tests, the simulated operator);
``fixture-agent sim uart-bootloader`` runs the same object until stopped.
"""

from agent.sim.stm32_bootloader.chip import Stm32F4Chip
from agent.sim.stm32_bootloader.engine import CommandRecord
from agent.sim.stm32_bootloader.faults import Faults
from agent.sim.stm32_bootloader.sim import Stm32BootloaderSim

__all__ = ["CommandRecord", "Faults", "Stm32BootloaderSim", "Stm32F4Chip"]
