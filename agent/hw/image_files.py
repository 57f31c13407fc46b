"""Firmware image files as the regions they occupy: ``.bin`` (with an address), Intel HEX, ELF.

Every format comes out the same way: a list of :class:`Segment` (name, address, bytes), contiguous
runs sorted by address, ready to be written as regions and verified by hashing exactly the bytes
written. Gaps are never filled, so nothing outside the image is touched.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from agent.hw.programmer import Region


class ImageFileError(ValueError):
    """An image file cannot be turned into regions."""


@dataclass(frozen=True, slots=True)
class Segment:
    """A contiguous run of image bytes at a target address."""

    name: str
    address: int
    data: bytes

    @property
    def region(self) -> Region:
        """The region these bytes occupy."""
        return Region(self.name, self.address, len(self.data))


def _runs(name: str, pieces: list[tuple[int, bytes]]) -> list[Segment]:
    """Merge adjacent pieces into runs; overlapping pieces are an error."""
    merged: list[tuple[int, bytearray]] = []
    for address, data in sorted(pieces):
        if not data:
            continue
        if merged and address < merged[-1][0] + len(merged[-1][1]):
            raise ImageFileError(f"{name}: data overlaps at 0x{address:08X}")
        if merged and address == merged[-1][0] + len(merged[-1][1]):
            merged[-1][1].extend(data)
        else:
            merged.append((address, bytearray(data)))
    if not merged:
        raise ImageFileError(f"{name}: no data")
    if len(merged) == 1:
        return [Segment(name, merged[0][0], bytes(merged[0][1]))]
    return [Segment(f"{name}.{i}", a, bytes(d)) for i, (a, d) in enumerate(merged)]


def segments_from_bin(name: str, data: bytes, address: int) -> list[Segment]:
    """A raw binary placed at ``address``."""
    return _runs(name, [(address, data)])


def segments_from_hex(name: str, text: str) -> list[Segment]:
    """Intel HEX: one segment per contiguous run of data records."""
    from intelhex import IntelHex, IntelHexError

    ihex = IntelHex()
    try:
        ihex.loadhex(io.StringIO(text))
    except IntelHexError as error:
        raise ImageFileError(f"{name}: {error}") from None
    pieces = [
        (start, bytes(ihex.tobinarray(start=start, end=end - 1))) for start, end in ihex.segments()
    ]
    return _runs(name, pieces)


def segments_from_elf(name: str, data: bytes) -> list[Segment]:
    """ELF: the file contents of every PT_LOAD segment, at its physical (load) address."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(io.BytesIO(data))
        pieces = [
            (int(seg["p_paddr"]), bytes(seg.data()))
            for seg in elf.iter_segments()
            if seg["p_type"] == "PT_LOAD" and seg["p_filesz"] > 0
        ]
    except ELFError as error:
        raise ImageFileError(f"{name}: {error}") from None
    return _runs(name, pieces)


def load_image_file(path: Path, *, address: int | None = None) -> list[Segment]:
    """Load ``path`` by its suffix (.bin needs ``address``; .hex/.ihex; .elf/.axf/.out)."""
    suffix = path.suffix.lower()
    name = path.stem
    if suffix in (".hex", ".ihex"):
        return segments_from_hex(name, path.read_text())
    if suffix in (".elf", ".axf", ".out"):
        return segments_from_elf(name, path.read_bytes())
    if address is None:
        raise ImageFileError(f"{path.name}: a raw binary needs a load address")
    return segments_from_bin(name, path.read_bytes(), address)
