"""An in-memory simulated target with real NOR-flash semantics, behind the Programmer protocol.

Flash erases to 0xFF in pages and a write can only clear bits (1 -> 0), exactly like the parts the
fixture programs, so a skipped erase or a double write shows up as a read-back mismatch. The board
is powered only while the fixture's DUT power relay is on (the bay asks a callable), so cutting
power mid-unit makes the next probe operation fail the way a real probe does.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agent.errors import ProbeLost, ProbeNotFound, ProgrammerAborted, TargetLocked, WriteFailed
from agent.hw.programmer import Connection, ConnectOptions, Region, ValidFlag

UID_BYTES = 8


@dataclass
class SimFlashBoard:
    """One simulated chip: flash, a unique id, a lock bit and optional defects."""

    uid: bytes
    flash: bytearray
    page_size: int
    locked: bool = False
    weak_words: set[int] = field(default_factory=set)  # addresses whose writes do not take

    @classmethod
    def blank(cls, *, flash_size: int, page_size: int, uid: bytes | None = None) -> SimFlashBoard:
        """A factory-fresh part: erased flash, random 8-byte unique id."""
        return cls(uid=secrets.token_bytes(UID_BYTES) if uid is None else uid,
                   flash=bytearray(b"\xff" * flash_size),
                   page_size=page_size)

    def erase_pages(self, address: int, size: int) -> None:
        """Erase every page that ``address``..``address+size`` touches."""
        first = address - address % self.page_size
        for page in range(first, address + size, self.page_size):
            self.flash[page:page + self.page_size] = b"\xff" * self.page_size

    def program(self, address: int, data: bytes) -> None:
        """NOR semantics: every byte becomes old AND new; weak words keep their old value."""
        for offset, value in enumerate(data):
            where = address + offset
            if where - where % 4 in self.weak_words:
                continue
            self.flash[where] &= value


class SimFlashBay:
    """The slot of the simulated fixture holding one :class:`SimFlashBoard`."""

    def __init__(self, *, flash_size: int, page_size: int, powered: Callable[[], bool]) -> None:
        self.flash_size = flash_size
        self.page_size = page_size
        self.powered = powered
        self.board: SimFlashBoard | None = None

    def place_new_board(self, *, uid: bytes | None = None) -> str:
        """Insert a factory-fresh board (random 8-byte unique id unless given); returns its id."""
        self.board = SimFlashBoard.blank(flash_size=self.flash_size, page_size=self.page_size,
                                         uid=uid)
        return self.board.uid.hex()


class SimFlashProgrammer:
    """Programmer protocol over a :class:`SimFlashBay` (no probe, no threads)."""

    def __init__(self, bay: SimFlashBay, *, op_delay_s: float = 0.0,
                 faults: Mapping[str, float] | None = None) -> None:
        self._bay = bay
        self._op_delay_s = op_delay_s
        # image sha256 -> share of parts on which writing that image does not take (one word)
        self._faults = dict(faults or {})
        self._connected = False
        self._aborted = False

    async def _board(self) -> SimFlashBoard:
        await asyncio.sleep(self._op_delay_s)
        if self._aborted:
            raise ProgrammerAborted("operation aborted")
        board = self._bay.board
        if board is None:
            raise ProbeNotFound("no board in the slot")
        if not self._bay.powered():
            raise ProbeLost("target not powered: no answer on the debug port")
        if not self._connected:
            raise ProbeLost("not connected")
        return board

    def _check_region(self, board: SimFlashBoard, region: Region) -> None:
        if region.end > len(board.flash):
            raise WriteFailed("region runs past the end of flash", region=region.name,
                              address=region.address)

    async def prepare(self, options: ConnectOptions | None) -> None:
        """Nothing to warm up: the board is in memory."""

    async def connect(self, options: ConnectOptions) -> Connection:
        self._aborted = False
        self._connected = True
        board = await self._board()
        if not board.locked:
            return Connection(uid_bytes=UID_BYTES)
        if not options.recover_locked:
            self._connected = False
            raise TargetLocked("part is read-protected; the job does not allow recovery")
        board.flash[:] = b"\xff" * len(board.flash)
        board.locked = False
        return Connection(recovered_locked_part=True, uid_bytes=UID_BYTES)

    async def read_unique_id(self) -> str:
        return (await self._board()).uid.hex()

    async def erase(self, region: Region) -> None:
        board = await self._board()
        self._check_region(board, region)
        board.erase_pages(region.address, region.size)

    async def write(self, region: Region, data: bytes) -> None:
        board = await self._board()
        self._check_region(board, region)
        if len(data) != region.size:
            raise WriteFailed(f"{len(data)} bytes for a region of {region.size}",
                              region=region.name)
        board.erase_pages(region.address, region.size)
        rate = self._faults.get(hashlib.sha256(data).hexdigest(), 0.0) if self._faults else 0.0
        if rate and random.random() < rate:
            board.weak_words.add(region.address - region.address % 4)  # this image, this part
        board.program(region.address, data)

    async def read(self, region: Region) -> bytes:
        board = await self._board()
        self._check_region(board, region)
        return bytes(board.flash[region.address:region.end])

    async def set_valid_flag(self, flag: ValidFlag) -> None:
        board = await self._board()
        if flag.kind != "flash-word":
            raise WriteFailed(f"valid flag kind {flag.kind} not supported by the simulated target",
                              address=flag.address)
        board.program(flag.address, flag.value.to_bytes(4, "little"))

    async def lock(self) -> None:
        (await self._board()).locked = True

    async def disconnect(self) -> None:
        self._connected = False

    async def abort(self) -> None:
        self._aborted = True
