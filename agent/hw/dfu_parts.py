"""The STM32 parts the DFU backend knows, recognised by the flash layout their bootloader declares.

A DFU bootloader does not report a product id; it names its memory in the alt settings' strings.
The flash alt setting's pages must match a known chip's sectors exactly (the sector table is the
UART backend's, from the reference manuals), and the chip must be one the firmware set targets.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import FailureCode, ProtocolError
from agent.hw.dfuse import MemoryLayout
from agent.hw.stm32_flash import STM32F40X, Stm32Chip

RDP_LEVEL0 = 0xAA  # readout protection off; 0xCC is the irreversible level 2, never written
FLASH_ALT = "Internal Flash"  # the name every STM32 DFU bootloader gives its main flash


@dataclass(frozen=True, slots=True)
class DfuPart:
    """One chip as its DFU bootloader presents it."""

    chip: Stm32Chip
    option_bytes_alt: str = "Option Bytes"
    uid_over_dfu: bool = True  # the ROM serves UPLOAD from system memory, where the UID is
    rdp_offset: int = 1  # RDP byte within the option bytes (RM0090: 0x1FFFC001)
    rdp_level1: int = 0xBB  # any value but 0xAA and 0xCC; ST's tools write 0xBB

    def matches(self, layout: MemoryLayout) -> bool:
        """True when ``layout``'s pages are this chip's flash sectors, one for one."""
        sectors = [self.chip.sector_span(n) for n in range(len(self.chip.sector_sizes))]
        return [(start, start + size) for start, size in layout.pages()] == sectors


DFU_PARTS = (DfuPart(STM32F40X),)


def identify(layout: MemoryLayout, target: str) -> DfuPart:
    """The known part whose sectors ``layout`` declares, checked against the set's ``target``."""
    for part in DFU_PARTS:
        if part.matches(layout):
            if target.lower() not in part.chip.targets:
                raise ProtocolError(
                    f"the device is a {part.chip.name} (by its flash layout) but the firmware "
                    f"set targets {target!r} (expected one of {sorted(part.chip.targets)})",
                    code=FailureCode.TARGET_MISMATCH,
                )
            return part
    declared = ", ".join(f"{s.pages}x{s.page_size} B at 0x{s.address:08X}" for s in layout.segments)
    known = [part.chip.name for part in DFU_PARTS]
    raise ProtocolError(
        f"flash layout {layout.name!r} ({declared}) matches no known part (known: {known})",
        code=FailureCode.TARGET_MISMATCH,
    )
