"""The debug port and access ports of the virtual nRF52840, at register level.

DP: IDR, CTRL/STAT (power-up ACKs follow the REQ bits, sticky errors), SELECT (APSEL, APBANKSEL),
ABORT. AP 0 is the AHB-AP (CSW with size/auto-increment/DeviceEn, TAR wrapping at 4 KiB, DRW with
byte lanes, BD0-3, CFG, BASE, IDR). AP 1 is Nordic's CTRL-AP (RESET, ERASEALL, ERASEALLSTATUS,
APPROTECTSTATUS). While APPROTECT is in force the AHB-AP reports DeviceEn = 0 and faults every
memory access, as the part does; only the CTRL-AP still works.
"""

from __future__ import annotations

import time

from agent.sim.nrf52840.chip import BusFaultError, Chip
from agent.sim.nrf52840.core import CoreDebug
from agent.sim.nrf52840.timing import ERASE_ALL_S, TimingModel

DP_IDR_VALUE = 0x2BA01477
DP_ABORT_IDR, DP_CTRL_STAT, DP_SELECT, DP_RDBUFF = 0x0, 0x4, 0x8, 0xC
CSYSPWRUPREQ, CDBGPWRUPREQ = 1 << 30, 1 << 28
STICKYERR = 1 << 5
AHB_AP_IDR, CTRL_AP_IDR = 0x24770011, 0x02880000
AP_CSW, AP_TAR, AP_DRW, AP_CFG, AP_BASE, AP_IDR = 0x00, 0x04, 0x0C, 0xF4, 0xF8, 0xFC
CSW_DEVICEEN = 1 << 6
CTRL_RESET, CTRL_ERASEALL, CTRL_ERASEALLSTATUS, CTRL_APPROTECTSTATUS = 0x0, 0x4, 0x8, 0xC
PPB_BASE = 0xE0000000
_SIZE_BYTES = {0: 1, 1: 2, 2: 4}


class ApFaultError(Exception):
    """The access faulted (the DP sets STICKYERR); the probe maps this to pyOCD's error."""


class AhbAp:
    """AP 0: the memory access port onto the system bus and the PPB."""

    def __init__(self, chip: Chip, core: CoreDebug) -> None:
        self.chip, self.core = chip, core
        self.csw = 0x23000002
        self.tar = 0

    def read(self, register: int) -> int:
        """Read an AHB-AP register (DRW/BDx perform a bus read)."""
        if register == AP_IDR:
            return AHB_AP_IDR
        if register == AP_CSW:
            return (self.csw & ~CSW_DEVICEEN) | (0 if self.chip.debug_locked else CSW_DEVICEEN)
        if register == AP_TAR:
            return self.tar
        if register == AP_BASE:
            return 0xE00FF003
        if register == AP_DRW:
            value = self._bus_read(self.tar)
            self._advance()
            return value
        if 0x10 <= register <= 0x1C:
            return self._bus_read((self.tar & ~0xF) | (register & 0xC), size=4)
        return 0  # CFG: little-endian, no large data

    def write(self, register: int, value: int) -> None:
        """Write an AHB-AP register (DRW/BDx perform a bus write)."""
        if register == AP_CSW:
            self.csw = value & ~CSW_DEVICEEN
        elif register == AP_TAR:
            self.tar = value
        elif register == AP_DRW:
            self._bus_write(self.tar, value)
            self._advance()
        elif 0x10 <= register <= 0x1C:
            self._bus_write((self.tar & ~0xF) | (register & 0xC), value, size=4)

    def read_words(self, count: int) -> list[int]:
        """Block read through DRW with auto-increment (the common pyOCD path), batched."""
        if self._fast_path(count):
            data = self._read_block(self.tar, 4 * count)
            self.tar = (self.tar & ~0xFFF) | ((self.tar + 4 * count) & 0xFFF)
            return [int.from_bytes(data[i : i + 4], "little") for i in range(0, len(data), 4)]
        return [self.read(AP_DRW) for _ in range(count)]

    def write_words(self, values: list[int]) -> None:
        """Block write through DRW with auto-increment, batched."""
        if self._fast_path(len(values)):
            data = b"".join((v & 0xFFFFFFFF).to_bytes(4, "little") for v in values)
            self._write_block(self.tar, data)
            self.tar = (self.tar & ~0xFFF) | ((self.tar + len(data)) & 0xFFF)
            return
        for value in values:
            self.write(AP_DRW, value)

    def _fast_path(self, count: int) -> bool:
        word_autoinc = self.csw & 0x37 == 0x12
        return word_autoinc and (self.tar & 0xFFF) + 4 * count <= 0x1000 and self.tar < PPB_BASE

    def _size(self) -> int:
        size = _SIZE_BYTES.get(self.csw & 7)
        if size is None:
            raise ApFaultError(f"unsupported CSW size {self.csw & 7}")
        return size

    def _advance(self) -> None:
        if self.csw & 0x30 == 0x10:
            self.tar = (self.tar & ~0xFFF) | ((self.tar + self._size()) & 0xFFF)

    def _read_block(self, address: int, size: int) -> bytes:
        if self.chip.debug_locked:
            raise ApFaultError("AHB-AP access while APPROTECT is enabled")
        try:
            return self.chip.read(address, size)
        except BusFaultError as error:
            raise ApFaultError(str(error)) from None

    def _write_block(self, address: int, data: bytes) -> None:
        if self.chip.debug_locked:
            raise ApFaultError("AHB-AP access while APPROTECT is enabled")
        try:
            self.chip.write(address, data)
        except BusFaultError as error:
            raise ApFaultError(str(error)) from None

    def _bus_read(self, address: int, size: int | None = None) -> int:
        size = size or self._size()
        word_address = address & ~3
        if word_address >= PPB_BASE:
            if self.chip.debug_locked:
                raise ApFaultError("AHB-AP access while APPROTECT is enabled")
            word = self.core.read(word_address)
        else:
            word = int.from_bytes(self._read_block(word_address, 4), "little")
        lane = 8 * (address & 3)
        return (word >> lane & ((1 << 8 * size) - 1)) << lane  # data stays on its byte lane

    def _bus_write(self, address: int, value: int, size: int | None = None) -> None:
        size = size or self._size()
        if address >= PPB_BASE:
            if self.chip.debug_locked:
                raise ApFaultError("AHB-AP access while APPROTECT is enabled")
            self.core.write(address & ~3, value)
            return
        lane = 8 * (address & 3)
        data = ((value >> lane) & ((1 << 8 * size) - 1)).to_bytes(size, "little")
        self._write_block(address, data)


class CtrlAp:
    """AP 1: Nordic's CTRL-AP, the one way into a locked part (ERASEALL)."""

    def __init__(self, chip: Chip, core: CoreDebug, timing: TimingModel) -> None:
        self.chip, self.core, self.timing = chip, core, timing
        self.reset_held = False
        self.eraseall = 0
        self._erase_done_at = 0.0

    def read(self, register: int) -> int:
        """Read a CTRL-AP register."""
        if register == AP_IDR:
            return CTRL_AP_IDR
        if register == CTRL_ERASEALLSTATUS:
            return int(time.monotonic() < self._erase_done_at)
        if register == CTRL_APPROTECTSTATUS:
            return 0 if self.chip.debug_locked else 1
        if register == CTRL_RESET:
            return int(self.reset_held)
        if register == CTRL_ERASEALL:
            return self.eraseall
        return 0

    def write(self, register: int, value: int) -> None:
        """Write a CTRL-AP register: ERASEALL erases flash and UICR and lifts the lock."""
        if register == CTRL_ERASEALL:
            self.eraseall = value & 1
            if value & 1:
                self.chip.arrays.erase_all()
                self.chip.erase_ram()
                self.chip.debug_locked = False
                self.core.firmware_vanished()
                self._erase_done_at = self.timing.busy_until(ERASE_ALL_S)
        elif register == CTRL_RESET:
            if self.reset_held and not value & 1:
                self.core.system_reset()
            self.reset_held = bool(value & 1)


class DebugPort:
    """The SW-DP and its two APs."""

    def __init__(self, chip: Chip, core: CoreDebug, timing: TimingModel) -> None:
        self.aps: dict[int, AhbAp | CtrlAp] = {
            0: AhbAp(chip, core),
            1: CtrlAp(chip, core, timing),
        }
        self.ctrl_stat = 0
        self.select = 0

    def read_dp(self, register: int) -> int:
        """Read a DP register."""
        if register == DP_ABORT_IDR:
            return DP_IDR_VALUE
        if register == DP_CTRL_STAT:
            acks = (self.ctrl_stat & (CSYSPWRUPREQ | CDBGPWRUPREQ)) << 1
            return self.ctrl_stat | acks
        return 0

    def write_dp(self, register: int, value: int) -> None:
        """Write a DP register (ABORT clears the sticky error flags)."""
        if register == DP_ABORT_IDR:
            self.ctrl_stat &= ~(STICKYERR | 0x92)
        elif register == DP_CTRL_STAT:
            self.ctrl_stat = (self.ctrl_stat & STICKYERR) | (value & 0x50000F00)
        elif register == DP_SELECT:
            self.select = value

    def selected_ap(self, address: int) -> tuple[AhbAp | CtrlAp | None, int]:
        """The AP SELECT points at and the register offset (bank from SELECT, A[3:2])."""
        return self.aps.get(self.select >> 24), (self.select & 0xF0) | (address & 0x0C)

    def fault(self) -> None:
        """Record a faulted transfer in CTRL/STAT."""
        self.ctrl_stat |= STICKYERR
