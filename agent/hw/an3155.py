"""A client for the STM32 ROM bootloader's USART protocol (ST application note AN3155).

Every command is a byte and its complement; the part answers ACK (0x79) or NACK (0x1F) after the
command and after each frame the host sends. Frames of more than one byte end with an XOR
checksum. Reads and writes move at most 256 bytes per command.

Failures are retried a bounded number of times. After a NACK the part is already back at the
command prompt; after a timeout or a garbled reply it may still be inside a frame, so the client
resynchronises first (see :meth:`An3155Client._resync`). If the part turns out to have reset, the
command fails with :class:`BootloaderResetError`: the state of the part is unknown, never assumed.

Commands run as scripted exchanges on a :class:`~agent.hw.serial_link.SerialLink`: each frame is
sent from the link's read callback as soon as the ACK it waits for arrives, and
:meth:`An3155Client.write_blocks` / :meth:`An3155Client.read_blocks` chain many commands that way.
Nothing is ever sent ahead of the reply it waits for (that could overrun the part's receiver); the
host only reacts sooner, which at 115200 baud is worth a few percent of a write + verify.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import partial, reduce
from operator import xor
from typing import TypeVar

from agent.errors import FailureCode, ProbeLost, ProtocolError
from agent.hw.serial_link import SerialLink, Turn

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


def address_frame(address: int) -> bytes:
    """Four address bytes, most significant first, and their checksum."""
    raw = address.to_bytes(4, "big")
    return raw + bytes([checksum(raw)])


class An3155Client:
    """One bootloader session over a serial link."""

    def __init__(
        self, link: SerialLink, *, byte_time: float, policy: LinkPolicy | None = None
    ) -> None:
        self._link = link
        self._byte_time = byte_time
        self.policy = policy or LinkPolicy()
        self.info = BootloaderInfo(version=0, commands=frozenset())

    async def close(self) -> None:
        """Close the port; safe to call twice."""
        self._link.close()

    async def sync(self) -> None:
        """Send 0x7F so the part measures the baud rate; accept a part that is already synced."""
        for _ in range(2):
            self._link.write(bytes([SYNC]))
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
            await self._exchange(command, None, [self._command_turn(command)])
            count = size or (await self._read(1, self._timeout(1)))[0] + 1
            body = await self._read(count, self._timeout(count))
            await self._exchange(command, None, [Turn(b"", 1, self._timeout(1), label="end")])
            return body

        return await self._retrying(command, run)

    async def read_memory(self, address: int, size: int) -> bytes:
        """Read Memory: ``size`` (1..256) bytes at ``address``."""
        return (await self.read_blocks([(address, size)]))[0]

    async def read_blocks(self, spans: Sequence[tuple[int, int]]) -> list[bytes]:
        """Read Memory for each (address, size), as :meth:`read_memory` does, back to back."""
        jobs = []
        for address, size in spans:
            if not 1 <= size <= MAX_BLOCK:
                raise ValueError(f"Read Memory moves 1..{MAX_BLOCK} bytes, not {size}")
            count = bytes([size - 1, (size - 1) ^ 0xFF])
            turns = [
                self._command_turn(Command.READ_MEMORY),
                self._acked("address", address_frame(address)),
                self._acked("count", count),
                Turn(b"", size, self._timeout(size), checked=False),
            ]
            jobs.append((address, turns))
        return await self._commands(Command.READ_MEMORY, jobs)

    async def write_memory(self, address: int, data: bytes) -> None:
        """Write Memory: 1..256 bytes at a word-aligned ``address`` (padded to words with 0xFF)."""
        await self.write_blocks([(address, data)])

    async def write_blocks(self, blocks: Sequence[tuple[int, bytes]]) -> None:
        """Write Memory for each (address, data), as :meth:`write_memory` does, back to back."""
        jobs = []
        for address, data in blocks:
            if address % 4 or not 1 <= len(data) <= MAX_BLOCK:
                message = f"Write Memory needs a word address and 1..256 bytes: 0x{address:08X}"
                raise ValueError(message)
            padded = data + b"\xff" * (-len(data) % 4)
            body = bytes([len(padded) - 1]) + padded
            turns = [
                self._command_turn(Command.WRITE_MEMORY),
                self._acked("address", address_frame(address)),
                self._acked("data", body + bytes([checksum(body)]), self.policy.write_timeout_s),
            ]
            jobs.append((address, turns))
        await self._commands(Command.WRITE_MEMORY, jobs)

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
        turns = [self._command_turn(Command.GO), self._acked("address", address_frame(address))]
        await self._exchange(Command.GO, address, turns)

    async def readout_protect(self) -> None:
        """Readout Protect (RDP level 1). The part resets afterwards: sync again before more."""
        await self._reset_command(Command.READOUT_PROTECT, self.policy.write_timeout_s)

    async def readout_unprotect(self) -> None:
        """Readout Unprotect: mass-erases flash, clears RDP and resets the part."""
        await self._reset_command(Command.READOUT_UNPROTECT, self.policy.mass_erase_timeout_s)

    async def _reset_command(self, command: Command, limit_s: float) -> None:
        """A command answered by ACK, then a second ACK once done (the part then resets)."""
        end = Turn(b"", 1, limit_s, label="end")
        await self._exchange(command, None, [self._command_turn(command), end])

    async def _erase(self, extended: bool, frame: bytes, limit_s: float) -> None:
        command = Command.EXTENDED_ERASE if extended else Command.ERASE
        pages = self._acked("pages", frame, limit_s + self._timeout(len(frame)))
        turns = [self._command_turn(command), pages]
        await self._retrying(command, partial(self._exchange, command, None, turns))

    async def _commands(
        self, command: Command, jobs: Sequence[tuple[int, list[Turn]]]
    ) -> list[bytes]:
        """Run one command per (address, turns) job, back to back in one link exchange.

        The link sends every frame the moment the ACK it waits for arrives, from one command to
        the next as well. A job that fails is handled as a lone command would be (resync, retry)
        and the jobs after it then go on. Returns each job's data.
        """
        results: list[bytes] = []
        while len(results) < len(jobs):
            pending = jobs[len(results) :]
            flat = [turn for _, turns in pending for turn in turns]
            replies = memoryview(await self._link.exchange(flat, ACK))
            for address, turns in pending:
                try:
                    data, replies = self._parse(command, address, turns, replies)
                except ProtocolError as exc:
                    run = partial(self._exchange, command, address, turns)
                    results.append(await self._retrying(command, run, address, failed=exc))
                    break
                results.append(data)
        return results

    async def _retrying(
        self,
        command: Command,
        run: Callable[[], Awaitable[_T]],
        address: int | None = None,
        *,
        failed: ProtocolError | None = None,
    ) -> _T:
        """Run one command exchange, retrying NACKs and resynchronising after lost bytes.

        ``failed``: how a first attempt, already made, failed.
        """
        for attempt in range(self.policy.retries + 1):
            try:
                if attempt == 0 and failed is not None:
                    raise failed
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
        self._link.write(bytes([_FILLER]) * 260)
        await self._discard_until_quiet(260)
        for _ in range(2):  # one filler byte completes a dangling half command
            self._link.write(bytes([_FILLER]))
            with contextlib.suppress(ReplyTimeoutError):
                if (await self._read(1, self._timeout(2)))[0] == NACK:
                    return
        self._link.write(bytes([SYNC]))
        with contextlib.suppress(ReplyTimeoutError):
            if (await self._read(1, self._timeout(2)))[0] == ACK:
                raise BootloaderResetError(f"the part reset during {command.name}", address=address)
        raise ProbeLost(f"no answer while resynchronising after {command.name}", address=address)

    async def _discard_until_quiet(self, expected_bytes: int) -> None:
        quiet = max(0.05, 8 * self._byte_time)
        deadline = asyncio.get_running_loop().time() + self._timeout(2 * expected_bytes)
        while asyncio.get_running_loop().time() < deadline:
            try:
                await self._link.read_any(quiet)
            except TimeoutError:
                return

    def _command_turn(self, command: Command) -> Turn:
        return self._acked("command", bytes([command, command ^ 0xFF]))

    def _acked(self, stage: str, frame: bytes, limit_s: float | None = None) -> Turn:
        """A frame answered by one ACK/NACK byte, by default within the ordinary timeout."""
        return Turn(frame, 1, self._timeout(1) if limit_s is None else limit_s, label=stage)

    async def _exchange(self, command: Command, address: int | None, turns: list[Turn]) -> bytes:
        """One command's turns, each frame sent once the one before is ACKed; returns its data."""
        replies = await self._link.exchange(turns, ACK)
        return self._parse(command, address, turns, memoryview(replies))[0]

    @staticmethod
    def _parse(
        command: Command, address: int | None, turns: list[Turn], replies: memoryview
    ) -> tuple[bytes, memoryview]:
        """Check one command's replies; return its data (if any) and the replies after it.

        Raises NackError for a NACK, ProtocolError for any other non-ACK byte and
        ReplyTimeoutError for a reply that is missing or short (the exchange timed out there).
        """
        data = b""
        for turn in turns:
            if len(replies) < turn.size:
                raise ReplyTimeoutError(f"no reply within {turn.limit_s:.2f} s ({turn.size} bytes)")
            if not turn.checked:
                data = bytes(replies[: turn.size])
            elif replies[0] == NACK:
                raise NackError(command, turn.label, address=address)
            elif replies[0] != ACK:
                raise ProtocolError(
                    f"{command.name}: expected ACK/NACK at the {turn.label} stage, "
                    f"got 0x{replies[0]:02X}",
                    address=address,
                )
            replies = replies[turn.size :]
        return data, replies

    def _timeout(self, reply_bytes: int) -> float:
        """Reply timeout: the policy's margin plus twice the wire time of the reply."""
        return self.policy.reply_timeout_s + 2 * reply_bytes * self._byte_time

    async def _read(self, count: int, limit_s: float) -> bytes:
        try:
            return await self._link.read(count, limit_s)
        except TimeoutError:
            raise ReplyTimeoutError(f"no reply within {limit_s:.2f} s ({count} bytes)") from None
