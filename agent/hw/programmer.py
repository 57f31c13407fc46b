"""The programmer capability: what the unit cycle needs from any probe or bootloader.

Backends (pyOCD over SWD, the STM32 UART ROM bootloader, the in-memory simulated target) implement
:class:`Programmer`. Every method is a coroutine: a backend that wraps a blocking library runs it on
its own per-slot thread and never on the event loop. ``abort`` may be called from another task while
an operation is in flight; the operation must then fail promptly with ``ProgrammerAborted`` (or
``ProbeLost``), never report success.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Region:
    """A named, contiguous range of target memory that one image occupies."""

    name: str
    address: int
    size: int

    @property
    def end(self) -> int:
        """First address past the region."""
        return self.address + self.size

    def __str__(self) -> str:
        return f"{self.name}@0x{self.address:08X}+{self.size}"


@dataclass(frozen=True, slots=True)
class ValidFlag:
    """Where the "valid" marker lives and the 32-bit word that means valid.

    ``kind`` is ``flash-word`` (a word in main flash, erased = 0xFFFFFFFF) or ``uicr`` (a customer
    register in the nRF UICR block). The marker is erased before any image is written and written
    only after every region verified, so a board that loses power mid-way never looks valid.
    """

    kind: Literal["flash-word", "uicr"]
    address: int
    value: int


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """What the current firmware set and job ask of the connection.

    ``target`` is the firmware set's target type (pyOCD target name such as ``nrf52840``, or the
    bootloader's chip family); a set may name one per interface (``swd_target``,
    ``bootloader_target``), and each backend takes its own, so a panel can mix SWD and bootloader
    slots. ``recover_locked`` allows the backend to mass-erase a locked part to regain access.
    Without it a locked part fails with ``TargetLocked`` and is never erased.
    """

    target: str
    recover_locked: bool = False
    swd_target: str | None = None  # the set's pyOCD target type, when it names one
    bootloader_target: str | None = None  # the set's ROM bootloader part, when it names one

    @property
    def for_swd(self) -> str:
        """The name a debug-probe backend connects to."""
        return self.swd_target or self.target

    @property
    def for_bootloader(self) -> str:
        """The name a ROM-bootloader backend (UART, USB-DFU) checks the part against."""
        return self.bootloader_target or self.target


@dataclass(frozen=True, slots=True)
class Connection:
    """What happened while connecting, for the unit record, and what to expect of the part.

    ``uid_bytes`` is the length of the part's factory unique id (nRF52 DEVICEID 8, STM32 UID
    12); the cycle refuses an id of another length, or all 0x00 or 0xFF, before taking a serial.
    """

    recovered_locked_part: bool = False
    uid_bytes: int | None = None


@runtime_checkable
class Programmer(Protocol):
    """One probe or bootloader link attached to one slot of the fixture."""

    async def prepare(self, options: ConnectOptions | None) -> None:
        """Do now what the first unit would otherwise pay for: imports, probe discovery, the
        target type's lookup (``options``, once the firmware set is known). Never touches a board.
        """

    async def connect(self, options: ConnectOptions) -> Connection:
        """Open the link to the board in the slot (DUT power is already on)."""

    async def read_unique_id(self) -> str:
        """The chip's factory unique id as lowercase hex (e.g. nRF FICR DEVICEID)."""

    async def erase(self, region: Region) -> None:
        """Erase every page/sector the region touches (to 0xFF)."""

    async def write(self, region: Region, data: bytes) -> None:
        """Make ``region`` hold ``data`` (``len(data) == region.size``), erasing as needed."""

    async def read(self, region: Region) -> bytes:
        """Read ``region`` back from the target, exactly ``region.size`` bytes."""

    async def set_valid_flag(self, flag: ValidFlag) -> None:
        """Write the valid marker; called only after every region verified."""

    async def lock(self) -> None:
        """Irreversibly protect the part (readout protection / APPROTECT); last step only.

        Returns only once the part, after a reset, reports itself locked; otherwise it raises
        with ``FailureCode.LOCK_FAILED``.
        """

    async def disconnect(self) -> None:
        """Close the link; safe to call when not connected."""

    async def abort(self) -> None:
        """Make any in-flight operation fail now; callable from another task."""
