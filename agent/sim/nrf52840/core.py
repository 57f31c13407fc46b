"""The Cortex-M4 debug registers (the PPB, 0xE0000000 and up) of the virtual nRF52840.

Halting is modelled the way pyOCD relies on it: every halt (request, BKPT, step, reset vector
catch) sets C_HALT as well as S_HALT, because pyOCD's ``step()`` polls C_HALT without a timeout.
A resume with the PC in RAM runs the flash algorithm on the emulated CPU to its BKPT; with the
timing model on, the core reports "running" until the flash work that run did would be finished.
A resume anywhere else means firmware would run: it is not emulated, the core just runs.

An erased part has no firmware: from reset it fetches its vectors (0xFFFFFFFF) and locks up, and
the same happens to a running core whose flash an erase-all removes. A debugger's halt request
ends lockup (ARMv7-M), unless the board carries the ``lockup_needs_reset`` fault; a reset always
does.
"""

from __future__ import annotations

import time

from agent.sim.nrf52840.chip import RAM_BASE, RAM_SIZE, Chip
from agent.sim.nrf52840.components import identification_registers
from agent.sim.nrf52840.power import CoreMode
from agent.sim.nrf52840.timing import TimingModel

DHCSR, DCRSR, DCRDR, DEMCR = 0xE000EDF0, 0xE000EDF4, 0xE000EDF8, 0xE000EDFC
DFSR, AIRCR, CPUID = 0xE000ED30, 0xE000ED0C, 0xE000ED00
FP_CTRL = 0xE0002000
DBGKEY = 0xA05F0000
C_DEBUGEN, C_HALT, C_STEP, C_MASKINTS = 1 << 0, 1 << 1, 1 << 2, 1 << 3
S_REGRDY, S_HALT, S_LOCKUP, S_RETIRE_ST, S_RESET_ST = 1 << 16, 1 << 17, 1 << 19, 1 << 24, 1 << 25
DFSR_HALTED, DFSR_BKPT, DFSR_VCATCH = 1 << 0, 1 << 1, 1 << 3
VC_CORERESET = 1 << 0
AIRCR_VECTKEY = 0x05FA0000
AIRCR_SYSRESETREQ, AIRCR_VECTRESET = 1 << 2, 1 << 0

_FIXED = {
    CPUID: 0x410FC241,  # Cortex-M4 r0p1
    0xE000E004: 0x00000001,  # ICTR: 64 interrupts
    0xE000ED6C: 0x01111131,  # ID_ISAR3
    0xE000ED78: 0x00000000,  # CLIDR: no caches
    0xE000ED90: 0x00000800,  # MPU_TYPE: 8 regions
    0xE000EF40: 0x10110021,  # MVFR0: single-precision FPU
    0xE000EF44: 0x11000011,  # MVFR1
    0xE000EF48: 0x00000000,  # MVFR2 (not on v7-M)
    0xE0001000: 0x40000000,  # DWT_CTRL: 4 comparators
    0xE0040FC8: 0x00000CA1,  # TPIU DEVID
}


class CoreDebug:
    """DHCSR/DCRSR/DCRDR/DFSR/DEMCR/AIRCR and the other PPB registers pyOCD touches."""

    def __init__(self, chip: Chip, timing: TimingModel) -> None:
        self.chip = chip
        self.timing = timing
        self.registers: dict[int, int] = {16: 0x01000000}
        self.ppb: dict[int, int] = {}
        self.ids = identification_registers() | _FIXED
        self.control = 0  # C_DEBUGEN | C_HALT | C_STEP | C_MASKINTS as last written
        self.lockup = False
        self.sticky = S_RETIRE_ST
        self._halts_at: float | None = None  # running until then, then halted (None: free-running)
        self.dfsr = 0
        self.dcrdr = 0
        self.fpb_enabled = False

    # --- state between sessions ----------------------------------------------------------------

    @property
    def mode(self) -> CoreMode:
        """Halted, locked up, or running (what a session leaves behind)."""
        if self.halted:
            return "halted"
        return "lockup" if self.lockup else "running"

    def resume_mode(self, mode: CoreMode) -> None:
        """Continue as a previous session left the core (registers: from the vector table)."""
        self._load_vectors()
        if mode == "halted":
            self._halt(DFSR_HALTED)
        else:
            self._run_free()
            self.lockup = mode == "lockup"

    def firmware_vanished(self) -> None:
        """An erase-all removed the code a running core executes: it faults and locks up."""
        if not self.halted:
            self.lockup = True

    # --- halting -------------------------------------------------------------------------------

    @property
    def halted(self) -> bool:
        """Whether the core is halted now (an algorithm run ends at its deadline)."""
        return self._halts_at is not None and time.monotonic() >= self._halts_at

    def _halt(self, reason: int, *, after_s: float = 0.0) -> None:
        self.control |= C_HALT
        self.dfsr |= reason
        self._halts_at = self.timing.busy_until(after_s)

    def _run_free(self) -> None:
        self.control &= ~C_HALT
        self._halts_at = None

    def _resume(self, step: bool) -> None:
        pc = self.registers.get(15, 0)
        if not (RAM_BASE <= pc < RAM_BASE + RAM_SIZE):
            self._run_free()  # firmware would run; it is not emulated
            return
        self.control &= ~C_HALT
        result = self.chip.run(self.registers, single_step=step)
        self.sticky |= S_RETIRE_ST
        self.lockup = not result.breakpoint
        self._halt(DFSR_HALTED if step else DFSR_BKPT, after_s=result.flash_busy_s)

    def system_reset(self) -> None:
        """Reset the system: peripherals, core registers from the vector table, vector catch."""
        self.chip.reset()
        erased = self._load_vectors()
        self.sticky |= S_RESET_ST
        self.lockup = False
        if self.ppb.get(DEMCR, 0) & VC_CORERESET:
            self._halt(DFSR_VCATCH)
        else:
            self._run_free()
            self.lockup = erased  # no firmware: the vector fetch faults, the core locks up

    def _load_vectors(self) -> bool:
        """Core registers as a reset leaves them; True when the reset vector is erased."""
        vectors = self.chip.read(0, 8)
        self.registers = {
            13: int.from_bytes(vectors[:4], "little"),
            17: int.from_bytes(vectors[:4], "little"),
            14: 0xFFFFFFFF,
            15: int.from_bytes(vectors[4:], "little") & ~1,
            16: 0x01000000,
        }
        return vectors[4:] == b"\xff\xff\xff\xff"

    # --- register access -----------------------------------------------------------------------

    def read(self, address: int) -> int:
        """Read a 32-bit PPB register."""
        if address == DHCSR:
            return self._read_dhcsr()
        if address == DCRDR:
            return self.dcrdr
        if address == DFSR:
            return self.dfsr
        if address == AIRCR:
            return 0xFA050000
        if address == FP_CTRL:
            return 0x260 | int(self.fpb_enabled)  # 6 code + 2 literal comparators
        if address in self.ids:
            return self.ids[address]
        return self.ppb.get(address, 0)

    def _read_dhcsr(self) -> int:
        halted = self.halted
        value = (self.control & 0xF) | S_REGRDY | self.sticky
        if not halted:
            value &= ~C_HALT
        value |= (S_HALT if halted else 0) | (S_LOCKUP if self.lockup else 0)
        self.sticky = 0  # S_RETIRE_ST and S_RESET_ST clear on read
        return value

    def write(self, address: int, value: int) -> None:
        """Write a 32-bit PPB register."""
        if address == DHCSR:
            self._write_dhcsr(value)
        elif address == DCRSR:
            self._access_core_register(value)
        elif address == DCRDR:
            self.dcrdr = value
        elif address == DFSR:
            self.dfsr &= ~value
        elif address == AIRCR:
            keyed = value & 0xFFFF0000 == AIRCR_VECTKEY
            if keyed and value & (AIRCR_SYSRESETREQ | AIRCR_VECTRESET):
                self.system_reset()
        elif address == FP_CTRL:
            if value & 2:  # KEY bit must be set for ENABLE to change
                self.fpb_enabled = bool(value & 1)
        elif address not in self.ids:
            self.ppb[address] = value

    def _write_dhcsr(self, value: int) -> None:
        if value & 0xFFFF0000 != DBGKEY:
            return
        was_halted = self.halted
        self.control = value & (C_DEBUGEN | C_STEP | C_MASKINTS) | (self.control & C_HALT)
        if not value & C_DEBUGEN:
            self._run_free()
        elif value & C_HALT:
            if self.lockup and self.chip.spec.lockup_needs_reset:
                return  # this core leaves lockup only through a reset
            if not was_halted:
                self.lockup = False  # entering debug state ends lockup
                self._halt(DFSR_HALTED)
        elif was_halted:
            self._resume(step=bool(value & C_STEP))

    def _access_core_register(self, value: int) -> None:
        selector = value & 0x7F
        if value & (1 << 16):
            self.registers[selector] = self.dcrdr
            if selector in (13, 17):  # SP is the MSP: thread mode uses the main stack here
                self.registers[13] = self.registers[17] = self.dcrdr
        else:
            self.dcrdr = self.registers.get(selector, 0)
