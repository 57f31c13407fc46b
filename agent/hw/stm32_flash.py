"""STM32 parts the UART backend knows (product id, sectors, UID address) and sector bookkeeping.

The table is the backend's own knowledge (from the reference manuals), independent of the
simulator's model, so a mistake in one is caught by the other and by stm32flash's table.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import EraseFailed
from agent.hw.programmer import Region

KIB = 1024


@dataclass(frozen=True, slots=True)
class Stm32Chip:
    """One STM32 family as the ROM bootloader sees it."""

    product_id: int
    name: str
    targets: frozenset[str]  # firmware-set target names that mean this part
    flash_base: int
    sector_sizes: tuple[int, ...]
    uid_address: int
    uid_size: int = 12

    @property
    def flash_end(self) -> int:
        """First address past main flash."""
        return self.flash_base + sum(self.sector_sizes)

    def sector_span(self, number: int) -> tuple[int, int]:
        """(start, end) addresses of sector ``number``."""
        start = self.flash_base + sum(self.sector_sizes[:number])
        return start, start + self.sector_sizes[number]

    def sectors(self, address: int, size: int) -> list[int]:
        """Numbers of the sectors that ``[address, address + size)`` touches.

        Raises ValueError for a range that leaves main flash.
        """
        if size <= 0 or address < self.flash_base or address + size > self.flash_end:
            raise ValueError(
                f"0x{address:08X}+{size} is not inside {self.name} flash "
                f"0x{self.flash_base:08X}..0x{self.flash_end:08X}"
            )
        touched = []
        for number in range(len(self.sector_sizes)):
            start, end = self.sector_span(number)
            if start < address + size and address < end:
                touched.append(number)
        return touched


# RM0090: STM32F405/407/415/417, 1 MiB in 4x16, 1x64 and 7x128 KiB sectors; UID at 0x1FFF7A10.
STM32F40X = Stm32Chip(
    product_id=0x413,
    name="STM32F40x/41x",
    targets=frozenset(
        {"stm32f4", "stm32f40x", "stm32f41x", "stm32f405", "stm32f407", "stm32f415", "stm32f417"}
    ),
    flash_base=0x0800_0000,
    sector_sizes=(16 * KIB,) * 4 + (64 * KIB,) + (128 * KIB,) * 7,
    uid_address=0x1FFF_7A10,
)

KNOWN_CHIPS: dict[int, Stm32Chip] = {chip.product_id: chip for chip in (STM32F40X,)}


class FlashLedger:
    """Which sectors this session erased, and which regions it then wrote into each."""

    def __init__(self) -> None:
        self.erased: set[int] = set()
        self.written: dict[int, set[str]] = {}
        self.spans: dict[str, tuple[int, int]] = {}

    def neighbours(self, sectors: list[int], region: str) -> dict[int, set[str]]:
        """Sectors among ``sectors`` holding regions other than ``region`` written this session."""
        found = {s: self.written.get(s, set()) - {region} for s in sectors}
        return {s: names for s, names in found.items() if names}

    def needing_erase(self, sectors: list[int], region: str) -> list[int]:
        """Sectors not erased this session, or erased and since written by ``region`` itself.

        A sector erased and then written only by other regions needs no erase for this one: the
        bytes of this region in it (they do not overlap) still read 0xFF.
        """
        return [s for s in sectors if s not in self.erased or region in self.written.get(s, ())]

    def mark_erased(self, sectors: list[int]) -> None:
        """These sectors now read 0xFF."""
        self.erased.update(sectors)
        for sector in sectors:
            self.written.pop(sector, None)

    def mark_written(self, sectors: list[int], region: str, span: tuple[int, int]) -> None:
        """``region`` (bytes ``span``) now holds data in these sectors."""
        for sector in sectors:
            self.written.setdefault(sector, set()).add(region)
        self.spans[region] = span

    def overlapping(self, region: Region) -> list[str]:
        """Other regions written this session whose bytes overlap ``region``."""
        return [
            name
            for name, (start, end) in self.spans.items()
            if name != region.name and start < region.end and region.address < end
        ]

    def refuse_shared(
        self, chip: Stm32Chip, region: Region, sectors: list[int], reserved: tuple[Region, ...]
    ) -> None:
        """Raise EraseFailed if erasing ``sectors`` would destroy other regions or reserved."""
        shared = self.neighbours(sectors, region.name)
        for sector in sectors:
            start, end = chip.sector_span(sector)
            for kept in reserved:
                if kept.address < end and start < kept.end:
                    shared.setdefault(sector, set()).add(f"{kept.name} (reserved)")
        if shared:
            sector, names = min(shared.items())
            start, end = chip.sector_span(sector)
            raise EraseFailed(
                f"sector {sector} (0x{start:08X}..0x{end:08X}) also holds {sorted(names)}; "
                "erasing it would destroy them: give each region its own sectors",
                region=region.name,
                address=start,
            )
