"""ST's DfuSe extensions to DFU 1.1 (UM0424, AN3156): addresses, erase, and the memory layout.

DfuSe gives DFU addresses. A DNLOAD with block number 0 carries a command: 0x21 + address sets the
address pointer, 0x41 + address erases the page (sector) holding it, 0x41 alone erases everything,
0x92 removes readout protection (which mass-erases and resets the part). A DNLOAD or UPLOAD with
block number n >= 2 moves data at ``pointer + (n - 2) * wTransferSize``, so one pointer serves a
whole region, and a block that need not be written is skipped by skipping its number.

Each alt setting names its memory in its string descriptor, e.g.
``@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg``: a name, then one or more groups of a
start address and segments ``<count>*<size><unit><type>``, unit K, M, B or space (bytes), type a
letter a..g whose bits say readable (1), erasable (2) and writable (4).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntFlag

from agent.errors import ProtocolError
from agent.hw.dfu import DfuInterface

SET_ADDRESS, ERASE, READ_UNPROTECT = 0x21, 0x41, 0x92
FIRST_DATA_BLOCK = 2
_MAX_BLOCK = 0xFFFF
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024 * 1024}
_SEGMENT = re.compile(r"^(\d+)\*(\d+)\s?([KMB]?)([a-g])$")
_ADDRESS = re.compile(r"^0[xX][0-9a-fA-F]{1,8}$")


class MemoryType(IntFlag):
    """What a segment allows (the bits of its type letter, 'a' = 1)."""

    READABLE = 1
    ERASABLE = 2
    WRITABLE = 4


@dataclass(frozen=True, slots=True)
class Segment:
    """``pages`` pages (sectors) of ``page_size`` bytes from ``address``."""

    address: int
    pages: int
    page_size: int
    kind: MemoryType

    @property
    def end(self) -> int:
        """First address past the segment."""
        return self.address + self.pages * self.page_size


@dataclass(frozen=True, slots=True)
class MemoryLayout:
    """The memory one alt setting serves, as its string descriptor declares it."""

    name: str
    segments: tuple[Segment, ...]

    def pages(self) -> list[tuple[int, int]]:
        """Every page as (start, size), in address order."""
        return [
            (segment.address + n * segment.page_size, segment.page_size)
            for segment in self.segments
            for n in range(segment.pages)
        ]

    def covers(self, address: int, size: int, need: MemoryType) -> bool:
        """True when ``[address, address + size)`` lies in segments that all allow ``need``."""
        at, end = address, address + size
        for segment in sorted(self.segments, key=lambda s: s.address):
            if segment.address <= at < segment.end:
                if need & ~segment.kind:
                    return False
                at = segment.end
                if at >= end:
                    return True
        return False


def parse_layout(text: str, *, where: str) -> MemoryLayout:
    """Parse a DfuSe alt-setting name; ``where`` names its source in every error."""

    def bad(detail: str) -> ProtocolError:
        return ProtocolError(f"{where}: memory layout {text!r}: {detail}")

    if not text.startswith("@"):
        raise bad("expected '@<name>/<address>/<segments>' (DfuSe names start with '@')")
    name, *groups = text[1:].split("/")
    if not groups or len(groups) % 2:
        raise bad("expected a name, then pairs of '/<address>/<segments>'")
    segments: list[Segment] = []
    for start_text, segments_text in zip(groups[::2], groups[1::2], strict=True):
        if not _ADDRESS.match(start_text.strip()):
            raise bad(f"start address {start_text!r} is not 0x followed by hex digits")
        address = int(start_text.strip(), 16)
        for number, raw in enumerate(segments_text.rstrip().split(","), start=1):
            segment = _segment(raw.strip(), address)
            if segment is None:
                raise bad(f"segment {number} {raw!r}: expected <count>*<size><unit K, M, B or "
                          "space><type a..g>, e.g. 04*016Kg")
            segments.append(segment)
            address = segment.end
    return MemoryLayout(name=name.strip(), segments=tuple(segments))


def _segment(raw: str, address: int) -> Segment | None:
    match = _SEGMENT.match(raw)
    if match is None:
        return None
    count, size, unit, kind = match.groups()
    page_size = int(size) * _UNITS[unit]
    if int(count) == 0 or page_size == 0:
        return None
    return Segment(address, int(count), page_size, MemoryType(ord(kind) - ord("a") + 1))


class DfuseCommands:
    """DfuSe commands and block transfers on a DFU interface whose alt setting is selected.

    ``last_address`` is the address of the latest block transfer, for naming where one failed.
    """

    def __init__(self, dfu: DfuInterface, *, transfer_size: int) -> None:
        self.dfu = dfu
        self.transfer_size = transfer_size
        self.last_address: int | None = None

    def set_address(self, address: int) -> None:
        """Point the address pointer at ``address``."""
        self._command(bytes([SET_ADDRESS]) + address.to_bytes(4, "little"),
                      f"set address pointer 0x{address:08X}")

    def erase_page(self, address: int) -> None:
        """Erase the page (sector) holding ``address``, waiting the device's poll timeouts."""
        self.last_address = address
        self._command(bytes([ERASE]) + address.to_bytes(4, "little"),
                      f"erase page 0x{address:08X}")

    def mass_erase(self) -> None:
        """Erase all of flash."""
        self._command(bytes([ERASE]), "mass erase")

    def read_unprotect(self) -> int:
        """Remove readout protection; the part mass-erases and resets. Returns its poll timeout."""
        status = self.dfu.download_then_reset(0, bytes([READ_UNPROTECT]), "read unprotect")
        return 0 if status is None else status.poll_timeout_ms

    def write_then_reset(self, address: int, data: bytes, what: str) -> int:
        """Write one block after which the part resets (option bytes). Returns its poll timeout."""
        self.set_address(address)
        self.last_address = address
        status = self.dfu.download_then_reset(FIRST_DATA_BLOCK, data, what)
        return 0 if status is None else status.poll_timeout_ms

    def write(self, address: int, data: bytes, *, skip: bytes | None = None) -> int:
        """Write ``data`` at ``address`` in transfer-size blocks; returns the blocks sent.

        Blocks equal to ``skip`` (the erased pattern) are not sent: their block numbers are
        passed over, so the pointer set once still places every later block.
        """
        sent, pointer = 0, None
        for offset in range(0, len(data), self.transfer_size):
            block = data[offset : offset + self.transfer_size]
            if skip is not None and block == skip[: len(block)]:
                continue
            base, number = self._block_number(offset)
            if pointer != base:
                self.set_address(address + base)
                pointer = base
            self.last_address = address + offset
            self.dfu.download(number, block, f"write block at 0x{address + offset:08X}")
            sent += 1
        return sent

    def read(self, address: int, size: int) -> bytes:
        """Read ``size`` bytes from ``address`` in transfer-size blocks."""
        out, pointer = bytearray(), None
        for offset in range(0, size, self.transfer_size):
            base, number = self._block_number(offset)
            if pointer != base:
                self.set_address(address + base)
                self.dfu.abort_to_idle("return to dfuIDLE before UPLOAD")
                pointer = base
            self.last_address = address + offset
            length = min(self.transfer_size, size - offset)
            out += self.dfu.upload(number, length, f"read block at 0x{address + offset:08X}")
        self.dfu.abort_to_idle("end of upload")
        return bytes(out)

    def leave(self, address: int) -> None:
        """Leave DFU mode and start the code at ``address`` (DfuSe's zero-length download)."""
        self.set_address(address)
        self.dfu.send_zero_length_download(FIRST_DATA_BLOCK, "leave DFU mode")
        self.dfu.get_status("leave DFU mode")  # starts manifestation; the part then resets

    def _block_number(self, offset: int) -> tuple[int, int]:
        """(pointer offset, block number) for the block at ``offset``.

        Block numbers have 16 bits: a region longer than 65534 blocks moves the pointer on.
        """
        window = (_MAX_BLOCK - FIRST_DATA_BLOCK + 1) * self.transfer_size
        base = offset - offset % window
        return base, FIRST_DATA_BLOCK + (offset - base) // self.transfer_size

    def _command(self, payload: bytes, what: str) -> None:
        self.dfu.download(0, payload, what)

