"""What the DFU ROM bootloader of a simulated STM32F405 reaches: flash, SRAM, system memory, OTP,
option bytes, and the four alt settings it names them by.

The memory itself is the UART simulator's chip model (RM0090 sectors, programming only clears
bits, the UID at 0x1FFF7A10); both simulators describe the same silicon. Option bytes written over
DFU are loaded at the part's next reset, as on silicon (the ROM resets the part right after).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.sim.stm32_bootloader.chip import (
    OPTION_BYTES_BASE,
    OPTION_BYTES_SIZE,
    RDP_LEVEL0,
    SRAM_SIZE,
    Stm32F4Chip,
    sector_bounds,
)

OTP_BASE, OTP_SIZE = 0x1FFF_7800, 512 + 16  # 16 blocks of 32 bytes, then their lock bytes
FEATURE_BASE, FEATURE_SIZE = 0xFFFF_0000, 4
# What ST's STM32F4 ROM names its alt settings (dfu-util -l on a real part shows the same).
ALT_NAMES = (
    "@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg",
    "@Option Bytes  /0x1FFFC000/01*016 e",
    "@OTP Memory /0x1FFF7800/01*512 e,01*016 e",
    "@Device Feature/0xFFFF0000/01*004 e",
)
FLASH_ALT, OPTION_BYTES_ALT, OTP_ALT, FEATURE_ALT = range(4)
RDP_LEVEL2 = 0xCC  # irreversible: no debug, no way back


@dataclass
class DfuBoard:
    """One board's worth of memory as the DFU bootloader sees it."""

    chip: Stm32F4Chip
    otp: bytearray = field(default_factory=lambda: bytearray(b"\xff" * OTP_SIZE))
    pending_rdp: int | None = None
    serial_override: str | None = None

    @classmethod
    def blank(cls, uid: bytes | None = None, *, serial: str | None = None) -> DfuBoard:
        """A factory-fresh part (erased, RDP level 0); ``serial`` replaces the derived string."""
        return cls(chip=Stm32F4Chip.blank(uid), serial_override=serial)

    @property
    def serial(self) -> str:
        """The USB serial string: derived from the UID the way ST's USB device library does."""
        if self.serial_override is not None:
            return self.serial_override
        uid = self.chip.uid
        words = [int.from_bytes(uid[n : n + 4], "little") for n in (0, 4, 8)]
        return f"{(words[0] + words[2]) & 0xFFFF_FFFF:08X}{words[1] >> 16:04X}"

    @property
    def protected(self) -> bool:
        """Readout protection in force (loaded at the last reset)."""
        return self.chip.protected

    def reset(self) -> None:
        """A system reset: option bytes written since the last one take effect."""
        if self.pending_rdp is not None:
            self.chip.rdp, self.pending_rdp = self.pending_rdp, None

    def read(self, address: int, size: int) -> bytes | None:
        """What UPLOAD returns at ``address``, None where the ROM refuses the address."""
        if _inside(address, size, OTP_BASE, OTP_SIZE):
            return bytes(self.otp[address - OTP_BASE : address - OTP_BASE + size])
        if _inside(address, size, FEATURE_BASE, FEATURE_SIZE):
            return bytes(size)
        return self.chip.read(address, size)

    def program(self, alternate: int, address: int, data: bytes) -> bool:
        """Store a DNLOAD block; False where this alt setting cannot write (errTARGET)."""
        if alternate == FLASH_ALT:
            return self.chip.program(address, data)
        if alternate == OTP_ALT and _inside(address, len(data), OTP_BASE, OTP_SIZE):
            for index, value in enumerate(data):
                self.otp[address - OTP_BASE + index] &= value
            return True
        return False

    def write_option_bytes(self, address: int, data: bytes) -> bool:
        """Program the option bytes (loaded at the next reset); False for a wrong address/size
        or a part at level 2, whose option bytes are frozen for good."""
        if address != OPTION_BYTES_BASE or len(data) != OPTION_BYTES_SIZE:
            return False
        if self.chip.rdp == RDP_LEVEL2:
            return False
        if self.protected and data[1] == RDP_LEVEL0:
            self.read_unprotect()  # RM0090: going back to level 0 mass-erases first
        self.pending_rdp = data[1]  # RM0090: RDP is the byte at 0x1FFFC001
        return True

    def sector_at(self, address: int) -> tuple[int, int] | None:
        """(number, size) of the flash sector holding ``address``, None outside flash."""
        for number, (start, size) in enumerate(sector_bounds()):
            if start <= address < start + size:
                return number, size
        return None

    def read_unprotect(self) -> None:
        """RDP back to level 0; flash and SRAM are erased first (loaded at the next reset)."""
        self.chip.mass_erase()
        self.chip.sram[:] = bytes(SRAM_SIZE)
        self.pending_rdp = RDP_LEVEL0


def _inside(address: int, size: int, base: int, length: int) -> bool:
    return base <= address and address + size <= base + length

