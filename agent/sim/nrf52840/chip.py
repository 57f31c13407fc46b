"""The nRF52840's system bus and its Cortex-M4 CPU, emulated with Unicorn.

The CPU only ever runs code the debugger put in RAM (pyOCD's own flash algorithm, loaded through
the probe exactly as on a real chip); firmware in flash is never executed. Flash and UICR are the
board's shared mappings, handed to Unicorn as host memory so that the algorithm reads them at
native speed. Unicorn cannot give a store NOR-flash semantics, so a write hook computes what the
flash really holds (AND with the old value, NVMC write-enable, stuck words) and restores it right
after the store lands: at the next hooked write (flash or peripheral) and when emulation stops.
The algorithm never reads a word back within the run that programs it.
"""

from __future__ import annotations

import ctypes
import mmap
from dataclasses import dataclass
from typing import Any

import unicorn
from unicorn import arm_const as arm

from agent.sim.nrf52840.boards import (
    APPROTECT_OFFSET,
    FICR_BASE,
    FICR_SIZE,
    FLASH_SIZE,
    UICR_BASE,
    UICR_SIZE,
    BoardSpec,
    ficr_image,
)
from agent.sim.nrf52840.nvmc import CONFIG, NVMC_BASE, READY, READYNEXT, FlashArrays, Nvmc
from agent.sim.nrf52840.timing import TimingModel

# Unicorn's Python binding is only partly typed: use it through one Any-typed handle.
UC: Any = unicorn
RAM_BASE = 0x20000000
RAM_SIZE = 256 * 1024
PERIPH_BASE = 0x40000000
PERIPH_SIZE = 0x40000  # covers NVMC (0x4001E000) and the watchdog (0x40010000) the algorithm feeds
_RUN_TIMEOUT_US = 10_000_000  # a runaway algorithm faults instead of hanging the probe
_BKPT_INTERRUPT = 7
_CORE_REGS = [getattr(arm, f"UC_ARM_REG_R{i}") for i in range(13)] + [
    arm.UC_ARM_REG_SP,
    arm.UC_ARM_REG_LR,
    arm.UC_ARM_REG_PC,
    arm.UC_ARM_REG_XPSR,
]


class BusFaultError(Exception):
    """An access to an address nothing answers at (the AHB-AP turns it into a fault)."""


@dataclass
class RunResult:
    """How a run of the CPU ended: at a BKPT, or in a fault (lockup)."""

    breakpoint: bool
    flash_busy_s: float


class Chip:
    """Memory, peripherals and CPU of one board; registers are numbered as in DCRSR.REGSEL."""

    def __init__(
        self, *, flash: mmap.mmap, uicr: mmap.mmap, spec: BoardSpec, timing: TimingModel
    ) -> None:
        self.arrays = FlashArrays(flash, uicr, spec.stuck_words)
        self.nvmc = Nvmc(self.arrays, timing)
        self.ficr = ficr_image(spec.device_id)
        self.peripherals: dict[int, int] = {}
        self._pending: list[tuple[int, bytes]] = []
        self._hit_bkpt = False
        self.spec = spec
        self.flash_bytes_read = 0  # by the debugger, this session (board statistics)
        # Latched from UICR.APPROTECT at power-on and at every reset, never in between: a
        # session that opens while the part stays powered finds the latch as it was left.
        self.debug_locked = False
        self._views = [ctypes.c_char.from_buffer(flash), ctypes.c_char.from_buffer(uicr)]
        self.uc: Any = UC.Uc(UC.UC_ARCH_ARM, UC.UC_MODE_THUMB | UC.UC_MODE_MCLASS)
        self.uc.mem_map_ptr(0, FLASH_SIZE, UC.UC_PROT_ALL, ctypes.addressof(self._views[0]))
        self.uc.mem_map_ptr(UICR_BASE, UICR_SIZE, UC.UC_PROT_ALL, ctypes.addressof(self._views[1]))
        self.uc.mem_map(FICR_BASE, FICR_SIZE, UC.UC_PROT_READ)
        self.uc.mem_write(FICR_BASE, self.ficr)
        self.uc.mem_map(RAM_BASE, RAM_SIZE, UC.UC_PROT_ALL)
        # Peripherals are RAM to the CPU with a write hook: the algorithm polls NVMC.READY after
        # every word, and a read callback per poll would cost more than the whole emulation.
        self.uc.mem_map(PERIPH_BASE, PERIPH_SIZE, UC.UC_PROT_ALL)
        self.uc.hook_add(
            UC.UC_HOOK_MEM_WRITE,
            self._on_periph_write,
            begin=PERIPH_BASE,
            end=PERIPH_BASE + PERIPH_SIZE - 1,
        )
        self._mirror_nvmc()
        for base, size in ((0, FLASH_SIZE), (UICR_BASE, UICR_SIZE)):
            self.uc.hook_add(
                UC.UC_HOOK_MEM_WRITE, self._on_flash_write, begin=base, end=base + size - 1
            )
        self.uc.hook_add(UC.UC_HOOK_INTR, self._on_interrupt)

    def close(self) -> None:
        """Drop the CPU and the views into the board files (so the mappings can close)."""
        del self.uc
        self._views.clear()

    @property
    def approtect_enabled(self) -> bool:
        """UICR.APPROTECT as the part samples it at reset (pre-hardened silicon rule)."""
        value = self.arrays.uicr[APPROTECT_OFFSET]
        return value != 0xFF and not self.spec.lock_ignored

    def erase_ram(self) -> None:
        """ERASEALL clears RAM as well as flash and UICR."""
        self.uc.mem_write(RAM_BASE, bytes(RAM_SIZE))

    def reset(self) -> None:
        """System reset of the peripherals (RAM keeps its contents, as on the part)."""
        self.peripherals.clear()
        self.nvmc.reset()
        self._mirror_nvmc()
        self.debug_locked = self.approtect_enabled

    # --- bus access from the debugger (AHB-AP) -------------------------------------------------

    def read(self, address: int, size: int) -> bytes:
        """Read ``size`` bytes that lie in one memory area."""
        located = self.arrays.locate(address)
        if located is not None and self.arrays.locate(address + size - 1) is not None:
            array, offset = located
            self.flash_bytes_read += size
            return array[offset : offset + size]
        if PERIPH_BASE <= address < PERIPH_BASE + PERIPH_SIZE:
            return b"".join(
                self._periph_read(address + i).to_bytes(4, "little") for i in range(0, size, 4)
            )[:size]
        if _inside(address, size, FICR_BASE, FICR_SIZE) or _inside(
            address, size, RAM_BASE, RAM_SIZE
        ):
            return bytes(self.uc.mem_read(address, size))
        raise BusFaultError(f"no memory at 0x{address:08X}")

    def write(self, address: int, data: bytes) -> None:
        """Write bytes that lie in one memory area (flash and UICR through the NVMC)."""
        if self.arrays.locate(address) is not None:
            self.nvmc.store(address, data)
        elif PERIPH_BASE <= address < PERIPH_BASE + PERIPH_SIZE:
            for i in range(0, len(data), 4):
                self._periph_write(address + i, int.from_bytes(data[i : i + 4], "little"))
            self._mirror_nvmc()
        elif _inside(address, len(data), RAM_BASE, RAM_SIZE):
            self.uc.mem_write(address, data)
        else:
            raise BusFaultError(f"no writable memory at 0x{address:08X}")

    # --- CPU -----------------------------------------------------------------------------------

    def run(self, registers: dict[int, int], *, single_step: bool = False) -> RunResult:
        """Run from ``registers[15]`` until a BKPT (or one instruction); updates ``registers``."""
        for index, reg in enumerate(_CORE_REGS[:15]):
            self.uc.reg_write(reg, registers.get(index, 0))
        self.uc.reg_write(arm.UC_ARM_REG_XPSR, registers.get(16, 0x01000000))
        self._hit_bkpt = False
        self.nvmc.cpu_running, self.nvmc.cpu_busy_s = True, 0.0
        try:
            start = registers.get(15, 0) | 1
            if single_step:
                self.uc.emu_start(start, 0xFFFFFFFF, count=1)
            else:
                self.uc.emu_start(start, 0xFFFFFFFF, timeout=_RUN_TIMEOUT_US)
            ok = self._hit_bkpt or single_step
        except UC.UcError:
            ok = False
        finally:
            self.nvmc.cpu_running = False
            self._apply_fixups()
        for index, reg in enumerate(_CORE_REGS):
            registers[index] = self.uc.reg_read(reg)
        registers[15] &= ~1
        registers[17] = registers[13]  # MSP: the algorithm runs privileged on the main stack
        return RunResult(breakpoint=ok, flash_busy_s=self.nvmc.cpu_busy_s)

    def _on_interrupt(self, uc: Any, number: int, _user: Any) -> None:
        if number == _BKPT_INTERRUPT:
            self._hit_bkpt = True
        uc.emu_stop()

    def _on_flash_write(
        self, _uc: Any, _access: int, address: int, size: int, value: int, _user: Any
    ) -> None:
        self._apply_fixups()
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        self._pending.append((address, self.nvmc.store(address, data)))

    def _apply_fixups(self) -> None:
        for address, content in self._pending:
            located = self.arrays.locate(address)
            if located is not None:
                array, offset = located
                array[offset : offset + len(content)] = content
        self._pending.clear()

    # --- peripherals ---------------------------------------------------------------------------

    def _on_periph_write(
        self, _uc: Any, _access: int, address: int, _size: int, value: int, _user: Any
    ) -> None:
        self._apply_fixups()
        self._periph_write(address, value)

    def _mirror_nvmc(self) -> None:
        """What the CPU reads of the NVMC: READY/READYNEXT = 1 (see Nvmc), CONFIG as set."""
        for offset, value in ((READY, 1), (READYNEXT, 1), (CONFIG, self.nvmc.config)):
            self.uc.mem_write(NVMC_BASE + offset, value.to_bytes(4, "little"))

    def _periph_read(self, address: int) -> int:
        if NVMC_BASE <= address < NVMC_BASE + 0x1000:
            return self.nvmc.read_reg(address - NVMC_BASE)
        return self.peripherals.get(address & ~3, 0)

    def _periph_write(self, address: int, value: int) -> None:
        if NVMC_BASE <= address < NVMC_BASE + 0x1000:
            self.nvmc.write_reg(address - NVMC_BASE, value)
        else:
            self.peripherals[address & ~3] = value


def _inside(address: int, size: int, base: int, length: int) -> bool:
    return base <= address and address + size <= base + length
