"""The ROM bootloader's command loop (ST AN3155, USART), as an STM32F4 v3.1 bootloader runs it.

After reset the part waits for 0x7F (baud detection) and ACKs it; from then on every command is a
byte and its complement, answered with ACK (0x79) or NACK (0x1F). With readout protection active
only Get, Get Version, Get ID and Readout Unprotect are served. Readout Protect/Unprotect and Write
Unprotect end with a system reset, after which the host must send 0x7F again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import reduce
from operator import xor

from agent.sim.stm32_bootloader.chip import (
    FLASH_BASE,
    FLASH_SIZE,
    PRODUCT_ID,
    RDP_LEVEL0,
    RDP_LEVEL1,
    SRAM_BASE,
    SRAM_SIZE,
    Stm32F4Chip,
)
from agent.sim.stm32_bootloader.faults import Faults
from agent.sim.stm32_bootloader.line import PacedPty

ACK = 0x79
NACK = 0x1F
SYNC = 0x7F
BOOTLOADER_VERSION = 0x31
GET, GET_VERSION, GET_ID = 0x00, 0x01, 0x02
READ_MEMORY, GO, WRITE_MEMORY = 0x11, 0x21, 0x31
ERASE, EXTENDED_ERASE = 0x43, 0x44
WRITE_UNPROTECT, READOUT_PROTECT, READOUT_UNPROTECT = 0x73, 0x82, 0x92
_ALLOWED_WHEN_PROTECTED = frozenset({GET, GET_VERSION, GET_ID, READOUT_UNPROTECT})


class DeviceReset(Exception):
    """The part reset: back to waiting for 0x7F."""


class AppStarted(Exception):
    """Go jumped to the application: the bootloader no longer listens."""


def checksum(data: bytes) -> int:
    """AN3155 checksum: XOR of the bytes (for a single byte, its complement is sent instead)."""
    return reduce(xor, data, 0)


@dataclass
class CommandRecord:
    """One command frame the bootloader accepted, for tests and the simulated operator."""

    command: int
    address: int | None = None
    size: int | None = None


@dataclass
class BootloaderEngine:
    """Serves AN3155 commands for one chip over one paced line."""

    line: PacedPty
    chip: Stm32F4Chip
    faults: Faults
    erase_command: int = EXTENDED_ERASE
    history: list[CommandRecord] = field(default_factory=list)

    @property
    def commands(self) -> bytes:
        """The command list Get reports, in the order ST's F4 bootloader lists it."""
        codes = [GET, GET_VERSION, GET_ID, READ_MEMORY, GO, WRITE_MEMORY, self.erase_command]
        return bytes([*codes, WRITE_UNPROTECT, READOUT_PROTECT, READOUT_UNPROTECT])

    async def run(self) -> None:
        """Serve until cancelled; a reset goes back to baud detection, Go to a running app."""
        while True:
            try:
                await self._wait_for_sync()
                while True:
                    await self._serve_command()
            except DeviceReset:
                self.line.discard_input()
            except AppStarted:
                while True:  # the application owns the UART now and ignores the host
                    await self.line.read(1)

    async def _wait_for_sync(self) -> None:
        while (await self.line.read(1))[0] != SYNC:
            pass  # before baud detection a stray byte is only noise
        await self.line.send(bytes([ACK]))

    async def _serve_command(self) -> None:
        code, complement = await self.line.read(2)
        handler = self._handlers().get(code)
        if code ^ complement != 0xFF or handler is None or self.faults.take_nack(code):
            await self.line.send(bytes([NACK]))
            return
        if self.chip.protected and code not in _ALLOWED_WHEN_PROTECTED:
            await self.line.send(bytes([NACK]))
            return
        if self.faults.take_reset(code):
            await self.line.send(bytes([ACK]))
            raise DeviceReset
        self.history.append(CommandRecord(code))
        await handler()

    def _handlers(self) -> dict[int, Callable[[], Awaitable[None]]]:
        return {
            GET: self._get,
            GET_VERSION: self._get_version,
            GET_ID: self._get_id,
            READ_MEMORY: self._read_memory,
            GO: self._go,
            WRITE_MEMORY: self._write_memory,
            self.erase_command: (
                self._extended_erase if self.erase_command == EXTENDED_ERASE else self._erase
            ),
            WRITE_UNPROTECT: self._write_unprotect,
            READOUT_PROTECT: self._readout_protect,
            READOUT_UNPROTECT: self._readout_unprotect,
        }

    async def _ack(self, ok: bool = True) -> None:
        await self.line.send(bytes([ACK if ok else NACK]))

    async def _get(self) -> None:
        body = bytes([len(self.commands), BOOTLOADER_VERSION]) + self.commands
        await self.line.send(bytes([ACK]) + body + bytes([ACK]))

    async def _get_version(self) -> None:
        # F4 bootloaders answer two option bytes kept at 0 for compatibility (AN3155).
        await self.line.send(bytes([ACK, BOOTLOADER_VERSION, 0, 0, ACK]))

    async def _get_id(self) -> None:
        pid = PRODUCT_ID.to_bytes(2, "big")
        await self.line.send(bytes([ACK, len(pid) - 1]) + pid + bytes([ACK]))

    async def _address(self) -> int | None:
        """ACK the command, take an address frame; None (NACK sent) when it is corrupt."""
        await self._ack()
        frame = await self.line.read(5)
        if checksum(frame[:4]) != frame[4]:
            await self._ack(False)
            return None
        return int.from_bytes(frame[:4], "big")

    async def _read_memory(self) -> None:
        address = await self._address()
        if address is None:
            return
        if self.chip.read(address, 1) is None:
            await self._ack(False)
            return
        await self._ack()
        count, complement = await self.line.read(2)
        data = self.chip.read(address, count + 1)
        if count ^ complement != 0xFF or data is None:
            await self._ack(False)
            return
        self.history[-1] = CommandRecord(READ_MEMORY, address, count + 1)
        await self.line.send(bytes([ACK]) + data)

    async def _go(self) -> None:
        address = await self._address()
        if address is None:
            return
        runnable = _within(address, FLASH_BASE, FLASH_SIZE) or _within(
            address, SRAM_BASE, SRAM_SIZE
        )
        await self._ack(runnable)
        if runnable:
            self.history[-1] = CommandRecord(GO, address)
            raise AppStarted

    async def _write_memory(self) -> None:
        address = await self._address()
        if address is None:
            return
        writable = address % 4 == 0 and self.chip.read(address, 1) is not None
        await self._ack(writable)
        if not writable:
            return
        count = (await self.line.read(1))[0]
        payload = await self.line.read(count + 2)
        data, received = payload[:-1], payload[-1]
        if checksum(bytes([count]) + data) != received or self.faults.take_write_nack():
            await self._ack(False)
            return
        self.history[-1] = CommandRecord(WRITE_MEMORY, address, len(data))
        if _within(address, FLASH_BASE, FLASH_SIZE) and self.faults.take_lost_write():
            await self._ack()  # acknowledged, never stored: only read-back can tell
            return
        await self._ack(len(data) % 4 == 0 and self.chip.program(address, data))

    async def _extended_erase(self) -> None:
        await self._ack()
        head = await self.line.read(2)
        count = int.from_bytes(head, "big")
        if count >= 0xFFF0:  # special erase: only mass erase (0xFFFF) exists on a single bank
            ok = (await self.line.read(1))[0] == checksum(head) and count == 0xFFFF
            if ok:
                self.chip.mass_erase()
            await self._ack(ok)
            return
        body = await self.line.read(2 * (count + 1) + 1)
        pages = [int.from_bytes(body[i : i + 2], "big") for i in range(0, len(body) - 1, 2)]
        await self._erase_pages(head + body[:-1], body[-1], pages)

    async def _erase(self) -> None:
        await self._ack()
        count = (await self.line.read(1))[0]
        if count == 0xFF:  # global erase
            ok = (await self.line.read(1))[0] == 0x00
            if ok:
                self.chip.mass_erase()
            await self._ack(ok)
            return
        body = await self.line.read(count + 2)
        await self._erase_pages(bytes([count]) + body[:-1], body[-1], list(body[:-1]))

    async def _erase_pages(self, frame: bytes, received: int, pages: list[int]) -> None:
        if checksum(frame) != received:
            await self._ack(False)
            return
        self.history[-1] = CommandRecord(self.erase_command, None, len(pages))
        await self._ack(all(self.chip.erase_sector(page) for page in pages))

    async def _write_unprotect(self) -> None:
        await self.line.send(bytes([ACK, ACK]))
        raise DeviceReset

    async def _readout_protect(self) -> None:
        await self._ack()
        self.chip.rdp = RDP_LEVEL1
        await self._ack()
        raise DeviceReset

    async def _readout_unprotect(self) -> None:
        await self._ack()
        self.chip.mass_erase()  # leaving level 1 always erases the whole flash
        self.chip.rdp = RDP_LEVEL0
        await self._ack()
        raise DeviceReset


def _within(address: int, base: int, size: int) -> bool:
    return base <= address < base + size
