"""The memory of a simulated STM32F40x/41x (product id 0x413) as its ROM bootloader sees it.

The layout follows RM0090: 1 MiB of flash in sectors of 16/16/16/16/64/128x7 KiB, 128 KiB of
SRAM, the 12-byte unique id at 0x1FFF7A10, the flash-size word at 0x1FFF7A22 and the user option
bytes at 0x1FFFC000. Flash programming can only clear bits (new = old AND data), as on silicon: a
write over non-erased flash leaves a mix that read-back must catch.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

PRODUCT_ID = 0x413
FLASH_BASE = 0x0800_0000
SECTOR_SIZES_KIB = (16, 16, 16, 16, 64, 128, 128, 128, 128, 128, 128, 128)
FLASH_SIZE = sum(SECTOR_SIZES_KIB) * 1024
SRAM_BASE = 0x2000_0000
SRAM_SIZE = 128 * 1024
SYSTEM_MEMORY_BASE = 0x1FFF_0000
SYSTEM_MEMORY_SIZE = 30 * 1024
UID_ADDRESS = 0x1FFF_7A10
UID_SIZE = 12
FLASH_SIZE_REG = 0x1FFF_7A22
OPTION_BYTES_BASE = 0x1FFF_C000
OPTION_BYTES_SIZE = 16
RDP_LEVEL0 = 0xAA
RDP_LEVEL1 = 0x00  # any value other than 0xAA and 0xCC is level 1
_USER_BYTE = 0xED  # reset value of USER/BOR in FLASH_OPTCR


def sector_bounds() -> list[tuple[int, int]]:
    """(start address, size) of every flash sector, in sector-number order."""
    bounds = []
    address = FLASH_BASE
    for size_kib in SECTOR_SIZES_KIB:
        bounds.append((address, size_kib * 1024))
        address += size_kib * 1024
    return bounds


@dataclass
class Stm32F4Chip:
    """One board's worth of memory: flash, SRAM, unique id and readout protection level."""

    uid: bytes
    flash: bytearray
    sram: bytearray
    rdp: int = RDP_LEVEL0

    @classmethod
    def blank(cls, uid: bytes | None = None) -> Stm32F4Chip:
        """A factory-fresh part: erased flash, RDP level 0, a random (or given) unique id."""
        uid = secrets.token_bytes(UID_SIZE) if uid is None else uid
        if len(uid) != UID_SIZE:
            raise ValueError(f"an STM32F4 unique id is {UID_SIZE} bytes, got {len(uid)}")
        return cls(uid=uid, flash=bytearray(b"\xff" * FLASH_SIZE), sram=bytearray(SRAM_SIZE))

    @property
    def protected(self) -> bool:
        """Readout protection active (level 1): the bootloader refuses memory access."""
        return self.rdp != RDP_LEVEL0

    def flash_bytes(self, address: int, size: int) -> bytes:
        """Flash contents for inspection by tests (no protection check)."""
        offset = address - FLASH_BASE
        if offset < 0 or offset + size > FLASH_SIZE:
            raise ValueError(f"0x{address:08X}+{size} is outside flash")
        return bytes(self.flash[offset : offset + size])

    def read(self, address: int, size: int) -> bytes | None:
        """Bytes the bootloader may read at ``address``, or None where it would NACK."""
        if _inside(address, size, FLASH_BASE, FLASH_SIZE):
            return self.flash_bytes(address, size)
        if _inside(address, size, SRAM_BASE, SRAM_SIZE):
            return bytes(self.sram[address - SRAM_BASE : address - SRAM_BASE + size])
        if _inside(address, size, SYSTEM_MEMORY_BASE, 0x8000):
            return self._system_area(address, size)
        if _inside(address, size, OPTION_BYTES_BASE, OPTION_BYTES_SIZE):
            start = address - OPTION_BYTES_BASE
            return self._option_bytes()[start : start + size]
        return None

    def program(self, address: int, data: bytes) -> bool:
        """Program flash (bits only clear) or store to SRAM; False where the ROM would NACK."""
        if _inside(address, len(data), FLASH_BASE, FLASH_SIZE):
            offset = address - FLASH_BASE
            for index, value in enumerate(data):
                self.flash[offset + index] &= value
            return True
        if _inside(address, len(data), SRAM_BASE, SRAM_SIZE):
            offset = address - SRAM_BASE
            self.sram[offset : offset + len(data)] = data
            return True
        return False

    def erase_sector(self, number: int) -> bool:
        """Erase one sector to 0xFF; False for a sector number the part does not have."""
        if not 0 <= number < len(SECTOR_SIZES_KIB):
            return False
        start, size = sector_bounds()[number]
        offset = start - FLASH_BASE
        self.flash[offset : offset + size] = b"\xff" * size
        return True

    def mass_erase(self) -> None:
        """Erase all of flash."""
        self.flash[:] = b"\xff" * FLASH_SIZE

    def _option_bytes(self) -> bytes:
        # Each option half-word is stored next to its complement, as RM0090 shows them.
        user_rdp = _USER_BYTE | (self.rdp << 8)
        n_wrp = 0x0FFF
        words = (user_rdp | ((~user_rdp & 0xFFFF) << 16), 0xFFFF_FFFF, n_wrp | (0xF000 << 16))
        raw = b"".join(word.to_bytes(4, "little") for word in words)
        return raw + b"\xff" * (OPTION_BYTES_SIZE - len(raw))

    def _system_area(self, address: int, size: int) -> bytes:
        """System memory: ROM (zeros here), the unique id and the flash-size register."""
        area = bytearray(0x8000)
        uid_at = UID_ADDRESS - SYSTEM_MEMORY_BASE
        area[uid_at : uid_at + UID_SIZE] = self.uid
        size_at = FLASH_SIZE_REG - SYSTEM_MEMORY_BASE
        area[size_at : size_at + 2] = (FLASH_SIZE // 1024).to_bytes(2, "little")
        start = address - SYSTEM_MEMORY_BASE
        return bytes(area[start : start + size])


def _inside(address: int, size: int, base: int, length: int) -> bool:
    return base <= address and address + size <= base + length
