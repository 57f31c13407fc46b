"""The STM32 ROM bootloader (AN3155 over a UART) as a :class:`~agent.hw.programmer.Programmer`.

Erase works on whole sectors, and STM32F4 sectors are large (up to 128 KiB), so two regions of a
firmware set can share one. The programmer keeps a ledger of what it erased and wrote in this
session and refuses to erase a sector that holds another region it already wrote, rather than
silently destroying it. Blocks that are all 0xFF are not written: erased flash already holds them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import termios
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Literal, TypeVar

from agent.errors import (
    EraseFailed,
    FailureCode,
    ProbeNotFound,
    ProgrammerAborted,
    ProgrammerError,
    ProtocolError,
    TargetLocked,
    WriteFailed,
)
from agent.hw.an3155 import MAX_BLOCK, An3155Client, Command, LinkPolicy, NackError
from agent.hw.boot_control import BootLines
from agent.hw.programmer import Connection, ConnectOptions, Region, ValidFlag
from agent.hw.stm32_flash import KNOWN_CHIPS, FlashLedger, Stm32Chip

_T = TypeVar("_T")
log = logging.getLogger(__name__)
_ERASED_BLOCK = b"\xff" * MAX_BLOCK


async def open_serial(
    port: str, *, baud: int, parity: Literal["even", "none"], policy: LinkPolicy | None = None
) -> An3155Client:
    """Open ``port``: 8E1 on a UART as AN3155 requires; a pty (a simulator) has no parity bit.

    Linux refuses PARENB on a pty, and there is no wire for it to protect, so a pty is opened
    8N1 whatever the slot says; the simulator still times its bytes as 8E1 frames.
    """
    import serial
    import serial_asyncio

    if parity == "even" and _is_pty(port):
        log.info("%s is a pty: opening it 8N1 (a pty cannot keep parity)", port)
        parity = "none"
    try:
        reader, writer = await serial_asyncio.open_serial_connection(
            url=port,
            baudrate=baud,
            parity=serial.PARITY_EVEN if parity == "even" else serial.PARITY_NONE,
            bytesize=serial.EIGHTBITS,
            stopbits=serial.STOPBITS_ONE,
        )
    except (OSError, serial.SerialException, termios.error) as exc:
        raise ProbeNotFound(f"cannot open serial port {port}: {exc}") from exc
    device = writer.transport.serial
    device.reset_input_buffer()
    frame_bits = 11 if parity == "even" else 10
    return An3155Client(
        reader, writer, byte_time=frame_bits / baud, policy=policy, fileno=device.fileno()
    )


def _is_pty(port: str) -> bool:
    return os.path.realpath(port).startswith("/dev/pts/")


class Stm32UartProgrammer:
    """One UART slot: an STM32 in its ROM bootloader, reached through ``port``."""

    def __init__(
        self,
        *,
        port: str,
        baud: int = 115200,
        parity: Literal["even", "none"] = "even",
        boot: BootLines | None = None,
        policy: LinkPolicy | None = None,
        reserved: Sequence[Region] = (),
    ) -> None:
        """``reserved``: flash that must outlive every cycle (e.g. calibration data); any erase
        of a sector holding part of it is refused."""
        self._port = port
        self._baud = baud
        self._parity: Literal["even", "none"] = parity
        self._boot = boot
        self._policy = policy
        self._reserved = tuple(reserved)
        self._client: An3155Client | None = None
        self._chip: Stm32Chip | None = None
        self._uid = b""
        self._ledger = FlashLedger()
        self._inflight: asyncio.Task[Any] | None = None
        self._aborted = False

    async def connect(self, options: ConnectOptions) -> Connection:
        """Enter the bootloader, identify the part, and deal with readout protection."""
        self._aborted = False
        await self.disconnect()
        return await self._guard("connect", lambda: self._connect(options))

    async def read_unique_id(self) -> str:
        """The 96-bit factory unique id, as read at connect, in lowercase hex."""
        self._require()
        return self._uid.hex()

    async def erase(self, region: Region) -> None:
        """Erase the sectors ``region`` touches; refuse if one holds another written region."""
        await self._guard("erase", lambda: self._erase(region))

    async def write(self, region: Region, data: bytes) -> None:
        """Erase what still needs it, then write every 256-byte block that is not all 0xFF."""
        if len(data) != region.size:
            raise ValueError(f"{region}: {len(data)} bytes of data for {region.size} bytes")
        await self._guard("write", lambda: self._write(region, data))

    async def read(self, region: Region) -> bytes:
        """Read ``region`` back, 256 bytes per Read Memory."""
        return await self._guard("read", lambda: self._read(region))

    async def set_valid_flag(self, flag: ValidFlag) -> None:
        """Program the valid word into erased flash and read it back."""
        await self._guard("set_valid_flag", lambda: self._set_valid_flag(flag))

    async def prepare(self, options: ConnectOptions | None) -> None:
        """Import the serial stack now (opening the port waits for a board)."""
        import serial_asyncio  # noqa: F401

    async def lock(self) -> None:
        """Readout Protect (RDP level 1), then confirm the part now refuses Read Memory."""
        await self._guard("lock", self._lock)

    async def disconnect(self) -> None:
        """Close the port and release BOOT0; safe when not connected."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()
            if self._boot is not None:
                await self._boot.leave_bootloader()

    async def abort(self) -> None:
        """Make the in-flight operation fail with ProgrammerAborted and drop the link."""
        self._aborted = True
        if self._inflight is not None:
            self._inflight.cancel()
        await self.disconnect()

    async def _guard(self, name: str, operation: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        """Run ``operation`` in its own task so that ``abort`` can cancel just that."""
        if self._aborted:
            raise ProgrammerAborted(f"{name}: the programmer was aborted; connect again")
        task = asyncio.get_running_loop().create_task(operation())
        self._inflight = task
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._aborted and (current is None or current.cancelling() == 0):
                raise ProgrammerAborted(f"{name} aborted") from None
            raise
        finally:
            self._inflight = None

    def _require(self) -> tuple[An3155Client, Stm32Chip]:
        if self._client is None or self._chip is None:
            raise ProtocolError("not connected to the bootloader")
        return self._client, self._chip

    async def _connect(self, options: ConnectOptions) -> Connection:
        if self._boot is not None:
            await self._boot.enter_bootloader()
        self._client = client = await open_serial(
            self._port, baud=self._baud, parity=self._parity, policy=self._policy
        )
        chip = await self._identify(client, options.for_bootloader)
        self._ledger = FlashLedger()
        recovered = False
        if not await self._read_uid(client, chip):
            if not options.recover_locked:
                raise TargetLocked("readout protection is active and recovery was not allowed")
            await client.readout_unprotect()  # mass-erases: the board's contents are gone
            await self._identify(client, options.for_bootloader)
            if not await self._read_uid(client, chip):
                raise TargetLocked("still locked after Readout Unprotect")
            self._ledger.mark_erased(list(range(len(chip.sector_sizes))))
            recovered = True
        self._chip = chip
        return Connection(recovered_locked_part=recovered, uid_bytes=chip.uid_size)

    async def _identify(self, client: An3155Client, target: str) -> Stm32Chip:
        """Sync, Get and Get ID; the part must be a known chip that the firmware set targets."""
        await client.sync()
        info = await client.get()
        pid = await client.get_id()
        chip = KNOWN_CHIPS.get(pid)
        if chip is None or target.lower() not in chip.targets:
            expected = sorted(chip.targets) if chip else [c.name for c in KNOWN_CHIPS.values()]
            raise ProtocolError(
                f"product id 0x{pid:03X} does not match target {target!r} (expected {expected})",
                code=FailureCode.TARGET_MISMATCH,
            )
        erase = {Command.ERASE, Command.EXTENDED_ERASE}
        if (
            not {Command.READ_MEMORY, Command.WRITE_MEMORY} <= info.commands
            or not erase & info.commands
        ):
            raise ProtocolError(f"bootloader 0x{info.version:02X} lacks read/write/erase commands")
        return chip

    async def _read_uid(self, client: An3155Client, chip: Stm32Chip) -> bool:
        """Read the unique id; False when Read Memory is refused (readout protection)."""
        try:
            self._uid = await client.read_memory(chip.uid_address, chip.uid_size)
        except NackError as exc:
            if exc.stage != "command":
                raise
            return False
        return True

    async def _erase(self, region: Region) -> None:
        client, chip = self._require()
        sectors = self._sectors(chip, region)
        overlapping = self._ledger.overlapping(region)
        if overlapping:
            raise EraseFailed(f"overlaps {overlapping} written in this cycle", region=region.name)
        todo = self._ledger.needing_erase(sectors, region.name)
        self._ledger.refuse_shared(chip, region, todo, self._reserved)
        try:
            await client.erase(todo)
        except ProtocolError as exc:
            raise EraseFailed(f"erase of sectors {todo} failed: {exc}", region=region.name) from exc
        self._ledger.mark_erased(todo)

    async def _write(self, region: Region, data: bytes) -> None:
        client, chip = self._require()
        if region.address % 4:
            raise WriteFailed("Write Memory needs a word-aligned start", region=region.name)
        await self._erase(region)
        for offset in range(0, len(data), MAX_BLOCK):
            block = data[offset : offset + MAX_BLOCK]
            if block == _ERASED_BLOCK[: len(block)]:
                continue  # erased flash already reads 0xFF: the sparse-image saving
            address = region.address + offset
            try:
                await client.write_memory(address, block)
            except ProtocolError as exc:
                raise WriteFailed(
                    f"Write Memory failed: {exc}", region=region.name, address=address
                ) from exc
        self._ledger.mark_written(
            self._sectors(chip, region), region.name, (region.address, region.end)
        )

    async def _read(self, region: Region) -> bytes:
        client, _ = self._require()
        out = bytearray()
        for offset in range(0, region.size, MAX_BLOCK):
            size = min(MAX_BLOCK, region.size - offset)
            try:
                out += await client.read_memory(region.address + offset, size)
            except ProtocolError as exc:
                raise ProtocolError(
                    f"read-back failed: {exc}",
                    region=region.name,
                    address=region.address + offset,
                    code=exc.code,
                ) from exc
        return bytes(out)

    async def _set_valid_flag(self, flag: ValidFlag) -> None:
        client, chip = self._require()
        code = FailureCode.VALID_FLAG_FAILED
        if flag.kind != "flash-word" or flag.address % 4:
            raise WriteFailed(f"needs a word-aligned flash-word flag, got {flag}", code=code)
        word = flag.value.to_bytes(4, "little")
        before = await client.read_memory(flag.address, 4)
        if before != b"\xff" * 4:
            raise WriteFailed(
                f"valid word reads {before.hex()}, not erased: erase its region first",
                address=flag.address,
                code=code,
            )
        await client.write_memory(flag.address, word)
        after = await client.read_memory(flag.address, 4)
        if after != word:
            raise WriteFailed(
                f"valid word reads {after.hex()} after writing {word.hex()}",
                address=flag.address,
                code=code,
            )
        name = f"valid-flag@0x{flag.address:08X}"
        span = (flag.address, flag.address + 4)
        self._ledger.mark_written(chip.sectors(flag.address, 4), name, span)

    async def _lock(self) -> None:
        client, chip = self._require()
        try:
            await client.readout_protect()
        except NackError as refused:  # the part said no: the unit is not locked
            raise ProgrammerError(f"Readout Protect refused: {refused}",
                                  code=FailureCode.LOCK_FAILED) from refused
        await client.sync()  # the part reset to apply the option bytes
        if await self._read_uid(client, chip):
            raise ProgrammerError("readout protection did not take", code=FailureCode.LOCK_FAILED)

    @staticmethod
    def _sectors(chip: Stm32Chip, region: Region) -> list[int]:
        try:
            return chip.sectors(region.address, region.size)
        except ValueError as exc:
            raise ProtocolError(str(exc), region=region.name, address=region.address) from None
