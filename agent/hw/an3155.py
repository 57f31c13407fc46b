"""A client for the STM32 ROM bootloader's USART protocol (ST application note AN3155).

Every command is a byte and its complement; the part answers ACK (0x79) or NACK (0x1F) after the
command and after each frame the host sends. Frames of more than one byte end with an XOR
checksum. Reads and writes move at most 256 bytes per command.

Failures are retried a bounded number of times. After a NACK the part is already back at the
command prompt; after a timeout or a garbled reply it may still be inside a frame, so the client
resynchronises first (see :meth:`An3155Client._resync`). If the part turns out to have reset, the
command fails with :class:`BootloaderResetError`: the state of the part is unknown, never assumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import reduce
from operator import xor
from typing import TypeVar

from agent.errors import FailureCode, ProbeLost, ProtocolError

ACK = 0x79
NACK = 0x1F
SYNC = 0x7F
MAX_BLOCK = 256
_FILLER = 0xFF  # completes any half-received frame harmlessly (see _resync)
_T = TypeVar("_T")


class Command(IntEnum):
    """AN3155 command codes the client uses."""

    GET = 0x00
    GET_VERSION = 0x01
    GET_ID = 0x02
    READ_MEMORY = 0x11
    GO = 0x21
    WRITE_MEMORY = 0x31
    ERASE = 0x43
    EXTENDED_ERASE = 0x44
    READOUT_PROTECT = 0x82
    READOUT_UNPROTECT = 0x92


# Served in every state, readout protection included: a NACK for one means a byte was lost.
_ALWAYS_SERVED = frozenset({Command.GET, Command.GET_VERSION, Command.GET_ID})


class NackError(ProtocolError):
    """The part answered NACK; ``stage`` says to what (command, address, count, data)."""

    def __init__(self, command: Command, stage: str, *, address: int | None = None) -> None:
        self.command = command
        self.stage = stage
        super().__init__(f"{command.name} NACKed at the {stage} stage", address=address)


class ReplyTimeoutError(ProtocolError):
    """The part did not answer in time."""

    code = FailureCode.TIMEOUT


class BootloaderResetError(ProbeLost):
    """The part was found waiting for 0x7F again: it reset in the middle of a command."""


@dataclass(frozen=True, slots=True)
class LinkPolicy:
    """Timeouts and retries. Reply timeouts add the wire time of the expected bytes."""

    reply_timeout_s: float = 0.5
    write_timeout_s: float = 1.0  # a 256-byte flash write takes about 1 ms; the ROM is slower
    sector_erase_timeout_s: float = 4.0  # RM0090: 128 KiB sector, x8 parallelism, maximum
    mass_erase_timeout_s: float = 40.0  # RM0090: 32 s maximum at x8
    retries: int = 3


@dataclass(frozen=True, slots=True)
class BootloaderInfo:
    """What Get reports: protocol version and supported command codes."""

    version: int
    commands: frozenset[int]


def checksum(data: bytes) -> int:
    """XOR of all bytes, as every multi-byte AN3155 frame ends with."""
    return reduce(xor, data, 0)


def command_frame(command: Command) -> bytes:
    """A command byte and its complement."""
    return bytes([command, command ^ 0xFF])


def data_frame(data: bytes) -> bytes:
    """Write Memory's data frame: count - 1, the data padded to whole words with 0xFF, checksum."""
    padded = data + b"\xff" * (-len(data) % 4)
    body = bytes([len(padded) - 1]) + padded
    return body + bytes([checksum(body)])


def address_frame(address: int) -> bytes:
    """Four address bytes, most significant first, and their checksum."""
    raw = address.to_bytes(4, "big")
    return raw + bytes([checksum(raw)])


class An3155Client:
    """One bootloader session over an asyncio byte stream (a serial port).

    ``fileno``: the port's file descriptor, for writing frames without a loop iteration's delay.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        byte_time: float,
        policy: LinkPolicy | None = None,
        fileno: int | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._fileno = fileno
        self._byte_time = byte_time
        self.policy = policy or LinkPolicy()
        self.info = BootloaderInfo(version=0, commands=frozenset())

    def _send(self, frame: bytes) -> None:
        """Put ``frame`` on the wire now rather than one event-loop iteration later.

        pyserial-asyncio's write() only queues data for a writability callback, and a link that
        waits for a reply after every frame pays that delay once per frame. With the port's file
        descriptor (``fileno``) and nothing queued ahead, the frame goes straight to the port;
        what the port does not take goes through the transport after it, so order is kept.
        """
        transport = self._writer.transport
        if transport.is_closing():
            return  # as the transport does: the fd may already belong to another file
        if self._fileno is not None and not transport.get_write_buffer_size():
            try:
                sent = os.write(self._fileno, frame)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise ProbeLost(f"serial port write failed: {exc}") from exc
            frame = frame[sent:]
        if frame:
            self._writer.write(frame)

    async def close(self) -> None:
        """Close the port; safe to call twice."""
        if not self._writer.is_closing():
            self._writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await self._writer.wait_closed()

    async def sync(self) -> None:
        """Send 0x7F so the part measures the baud rate; accept a part that is already synced."""
        for _ in range(2):
            self._send(bytes([SYNC]))
            try:
                reply = await self._read(1, self.policy.reply_timeout_s)
            except ReplyTimeoutError:
                continue  # an already-synced part took 0x7F as a command byte: send another
            if reply[0] in (ACK, NACK):  # NACK: already synced, 0x7F paired into a bad command
                return
        raise ProbeLost("no answer to the 0x7F sync byte: is the part in bootloader mode?")

    async def get(self) -> BootloaderInfo:
        """Get: bootloader version and the commands it supports (remembered in ``info``)."""
        body = await self._query(Command.GET, None)
        self.info = BootloaderInfo(version=body[0], commands=frozenset(body[1:]))
        return self.info

    async def get_version(self) -> tuple[int, int, int]:
        """Get Version: (version, option byte 1, option byte 2)."""
        version, option1, option2 = await self._query(Command.GET_VERSION, 3)
        return version, option1, option2

    async def get_id(self) -> int:
        """Get ID: the product id (0x413 for STM32F40x/41x)."""
        return int.from_bytes(await self._query(Command.GET_ID, None), "big")

    async def _query(self, command: Command, size: int | None) -> bytes:
        """A command answered by ACK, data, ACK; ``size`` None: the data starts with count - 1."""

        async def run() -> bytes:
            await self._command(command)
            count = size or (await self._read(1, self._timeout(1)))[0] + 1
            body = await self._read(count, self._timeout(count))
            await self._ack(command, "end")
            return body

        return await self._retrying(command, run)

    async def read_memory(self, address: int, size: int) -> bytes:
        """Read Memory: ``size`` (1..256) bytes at ``address``."""
        if not 1 <= size <= MAX_BLOCK:
            raise ValueError(f"Read Memory moves 1..{MAX_BLOCK} bytes, not {size}")

        async def run() -> bytes:
            await self._command(Command.READ_MEMORY, address)
            await self._send_frame(Command.READ_MEMORY, "address", address_frame(address), address)
            count = bytes([size - 1, (size - 1) ^ 0xFF])
            await self._send_frame(Command.READ_MEMORY, "count", count, address)
            return await self._read(size, self._timeout(size))

        return await self._retrying(Command.READ_MEMORY, run, address)

    async def write_memory(self, address: int, data: bytes) -> None:
        """Write Memory: 1..256 bytes at a word-aligned ``address`` (padded to words with 0xFF)."""
        if address % 4 or not 1 <= len(data) <= MAX_BLOCK:
            raise ValueError(f"Write Memory needs a word address and 1..256 bytes: 0x{address:08X}")
        frame = data_frame(data)

        async def run() -> None:
            await self._command(Command.WRITE_MEMORY, address)
            await self._send_frame(Command.WRITE_MEMORY, "address", address_frame(address), address)
            self._send(frame)
            await self._ack(Command.WRITE_MEMORY, "data", address, self.policy.write_timeout_s)

        await self._retrying(Command.WRITE_MEMORY, run, address)

    async def erase(self, pages: Sequence[int]) -> None:
        """Erase these pages (sectors on an F4): Extended Erase, or Erase on older parts."""
        if not pages:
            return
        extended = Command.EXTENDED_ERASE in self.info.commands
        if extended:
            numbers = [len(pages) - 1, *pages]
            body = b"".join(number.to_bytes(2, "big") for number in numbers)
        else:
            body = bytes([len(pages) - 1, *pages])
        frame = body + bytes([checksum(body)])
        timeout = self.policy.sector_erase_timeout_s * len(pages)
        await self._erase(extended, frame, timeout)

    async def mass_erase(self) -> None:
        """Erase all of flash."""
        extended = Command.EXTENDED_ERASE in self.info.commands
        frame = b"\xff\xff\x00" if extended else b"\xff\x00"
        await self._erase(extended, frame, self.policy.mass_erase_timeout_s)

    async def go(self, address: int) -> None:
        """Go: jump to the code at ``address``; the bootloader stops listening."""
        await self._command(Command.GO, address)
        await self._send_frame(Command.GO, "address", address_frame(address), address)

    async def readout_protect(self) -> None:
        """Readout Protect (RDP level 1). The part resets afterwards: sync again before more."""
        await self._command(Command.READOUT_PROTECT)
        await self._ack(Command.READOUT_PROTECT, "end", None, self.policy.write_timeout_s)

    async def readout_unprotect(self) -> None:
        """Readout Unprotect: mass-erases flash, clears RDP and resets the part."""
        await self._command(Command.READOUT_UNPROTECT)
        await self._ack(Command.READOUT_UNPROTECT, "end", None, self.policy.mass_erase_timeout_s)

    async def _erase(self, extended: bool, frame: bytes, limit_s: float) -> None:
        command = Command.EXTENDED_ERASE if extended else Command.ERASE

        async def run() -> None:
            await self._command(command)
            self._send(frame)
            await self._ack(command, "pages", None, limit_s + self._timeout(len(frame)))

        await self._retrying(command, run)

    async def _retrying(
        self, command: Command, run: Callable[[], Awaitable[_T]], address: int | None = None
    ) -> _T:
        """Run one command exchange, retrying NACKs and resynchronising after lost bytes."""
        for attempt in range(self.policy.retries + 1):
            try:
                return await run()
            except NackError as exc:
                if attempt == self.policy.retries:
                    raise
                if exc.stage == "command" and command in _ALWAYS_SERVED:
                    # A part refuses these only when out of step (a stale reply took the place
                    # of this one and pairs are shifted by a byte): realign before the retry.
                    await self._resync(command, address)
            except ProtocolError as exc:  # timeout or garbage: the part may be mid-frame
                await self._resync(command, address)
                if attempt == self.policy.retries:
                    raise ProtocolError(
                        f"{command.name} failed {attempt + 1} times, last: {exc}",
                        address=address,
                        code=exc.code,
                    ) from exc
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _resync(self, command: Command, address: int | None) -> None:
        """Bring a part that may be half-way through a frame back to the command prompt.

        0xFF filler is safe in every frame: it makes an invalid address (NACK), a checksum that
        fails for any erase list (NACK), or at worst a 256-byte write of 0xFF (a no-op on flash).
        The 260 bytes cover the longest frame; leftovers pair up into NACKed commands. A part
        that answers none of it but ACKs 0x7F has reset.
        """
        self._send(bytes([_FILLER]) * 260)
        await self._discard_until_quiet(260)
        for _ in range(2):  # one filler byte completes a dangling half command
            self._send(bytes([_FILLER]))
            with contextlib.suppress(ReplyTimeoutError):
                if (await self._read(1, self._timeout(2)))[0] == NACK:
                    return
        self._send(bytes([SYNC]))
        with contextlib.suppress(ReplyTimeoutError):
            if (await self._read(1, self._timeout(2)))[0] == ACK:
                raise BootloaderResetError(f"the part reset during {command.name}", address=address)
        raise ProbeLost(f"no answer while resynchronising after {command.name}", address=address)

    async def _discard_until_quiet(self, expected_bytes: int) -> None:
        quiet = max(0.05, 8 * self._byte_time)
        deadline = asyncio.get_running_loop().time() + self._timeout(2 * expected_bytes)
        while asyncio.get_running_loop().time() < deadline:
            try:
                async with asyncio.timeout(quiet):
                    if not await self._reader.read(4096):
                        raise ProbeLost("serial port closed")
            except TimeoutError:
                return

    async def _command(self, command: Command, address: int | None = None) -> None:
        self._send(command_frame(command))
        await self._ack(command, "command", address)

    async def _send_frame(self, command: Command, stage: str, frame: bytes, address: int) -> None:
        self._send(frame)
        await self._ack(command, stage, address)

    async def _ack(
        self, command: Command, stage: str, address: int | None = None, limit_s: float = 0.0
    ) -> None:
        reply = (await self._read(1, limit_s or self._timeout(1)))[0]
        if reply == ACK:
            return
        if reply == NACK:
            raise NackError(command, stage, address=address)
        raise ProtocolError(
            f"{command.name}: expected ACK/NACK at the {stage} stage, got 0x{reply:02X}",
            address=address,
        )

    def _timeout(self, reply_bytes: int) -> float:
        """Reply timeout: the policy's margin plus twice the wire time of the reply."""
        return self.policy.reply_timeout_s + 2 * reply_bytes * self._byte_time

    async def _read(self, count: int, limit_s: float) -> bytes:
        try:
            async with asyncio.timeout(limit_s):
                return await self._reader.readexactly(count)
        except TimeoutError:
            raise ReplyTimeoutError(f"no reply within {limit_s:.2f} s ({count} bytes)") from None
        except asyncio.IncompleteReadError:
            raise ProbeLost("serial port closed") from None
