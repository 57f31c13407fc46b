"""The simulated STM32F4 bootloader, spoken to in raw AN3155 bytes over its pty."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import serial_asyncio

from agent.config import UartSlot
from agent.errors import ProbeLost
from agent.hw.an3155 import LinkPolicy
from agent.hw.programmer import ConnectOptions
from agent.hw.stm32_uart import Stm32UartProgrammer
from agent.sim.stm32_bootloader import Stm32BootloaderSim
from agent.sim.stm32_bootloader.bay import Stm32Bay
from agent.sim.stm32_bootloader.chip import FLASH_BASE, RDP_LEVEL1, UID_ADDRESS

ACK, NACK = 0x79, 0x1F

Port = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Stm32BootloaderSim]:
    board = Stm32BootloaderSim(baud=1_000_000, parity="none", latency_ms=0.5)
    async with board.serving(tmp_path / "tty"):
        yield board


@pytest.fixture
async def port(sim: Stm32BootloaderSim, tmp_path: Path) -> AsyncIterator[Port]:
    reader, writer = await serial_asyncio.open_serial_connection(url=str(tmp_path / "tty"))
    writer.write(b"\x7f")
    assert await asyncio.wait_for(reader.readexactly(1), 2) == bytes([ACK])
    yield reader, writer
    writer.close()


async def exchange(port: Port, data: bytes, reply: int) -> bytes:
    reader, writer = port
    writer.write(data)
    return await asyncio.wait_for(reader.readexactly(reply), 2)


def command(code: int) -> bytes:
    return bytes([code, code ^ 0xFF])


def address(value: int) -> bytes:
    raw = value.to_bytes(4, "big")
    return raw + bytes([raw[0] ^ raw[1] ^ raw[2] ^ raw[3]])


async def test_get_lists_the_f4_commands_with_extended_erase(port: Port) -> None:
    reply = await exchange(port, command(0x00), 14)
    assert reply[0] == ACK
    assert reply[-1] == ACK
    assert reply[1] == 10
    assert reply[2] == 0x31
    assert set(reply[3:-1]) == {0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x44, 0x73, 0x82, 0x92}


async def test_get_id_is_0x413(port: Port) -> None:
    assert await exchange(port, command(0x02), 5) == bytes([ACK, 1, 0x04, 0x13, ACK])


async def test_bad_complement_is_nacked(port: Port) -> None:
    assert await exchange(port, bytes([0x00, 0x00]), 1) == bytes([NACK])


async def test_read_memory_returns_the_uid(port: Port, sim: Stm32BootloaderSim) -> None:
    assert await exchange(port, command(0x11), 1) == bytes([ACK])
    assert await exchange(port, address(UID_ADDRESS), 1) == bytes([ACK])
    reply = await exchange(port, bytes([11, 11 ^ 0xFF]), 13)
    assert reply == bytes([ACK]) + sim.chip.uid


async def test_write_memory_checksum_error_is_nacked_and_not_stored(
    port: Port, sim: Stm32BootloaderSim
) -> None:
    await exchange(port, command(0x31), 1)
    await exchange(port, address(FLASH_BASE), 1)
    frame = bytes([3, 1, 2, 3, 4])
    assert await exchange(port, frame + bytes([0x55]), 1) == bytes([NACK])
    assert sim.flash(FLASH_BASE, 4) == b"\xff" * 4
    await exchange(port, command(0x31), 1)
    await exchange(port, address(FLASH_BASE), 1)
    assert await exchange(port, frame + bytes([3 ^ 1 ^ 2 ^ 3 ^ 4]), 1) == bytes([ACK])
    assert sim.flash(FLASH_BASE, 4) == bytes([1, 2, 3, 4])


async def test_extended_erase_erases_only_the_listed_sector(
    port: Port, sim: Stm32BootloaderSim
) -> None:
    sim.chip.flash[:] = b"\x00" * len(sim.chip.flash)
    await exchange(port, command(0x44), 1)
    frame = bytes([0, 0, 0, 1])  # one page: sector 1 (16 KiB at 0x08004000)
    assert await exchange(port, frame + bytes([1]), 1) == bytes([ACK])
    assert sim.flash(FLASH_BASE + 0x4000, 0x4000) == b"\xff" * 0x4000
    assert sim.flash(FLASH_BASE, 4) == b"\x00" * 4
    assert sim.flash(FLASH_BASE + 0x8000, 4) == b"\x00" * 4


async def test_protected_part_refuses_reads_until_unprotect_erases_it(
    port: Port, sim: Stm32BootloaderSim
) -> None:
    sim.chip.flash[:4] = b"\x01\x02\x03\x04"
    sim.chip.rdp = RDP_LEVEL1
    assert await exchange(port, command(0x11), 1) == bytes([NACK])
    assert (await exchange(port, command(0x02), 5))[0] == ACK  # identification still works
    assert await exchange(port, command(0x92), 2) == bytes([ACK, ACK])
    assert not sim.chip.protected
    assert sim.flash(FLASH_BASE, 4) == b"\xff" * 4
    # The part reset: it waits for 0x7F again.
    assert await exchange(port, b"\x7f", 1) == bytes([ACK])


async def test_reply_is_scheduled_after_latency_at_line_rate(
    port: Port, sim: Stm32BootloaderSim
) -> None:
    await exchange(port, command(0x02), 5)
    timing = sim.timing
    expected = sim.line.last_rx_done + timing.latency_s + 5 * timing.byte_time
    assert sim.line.tx_idle_at == pytest.approx(expected)


async def test_host_turnaround_is_timed_from_the_reply_to_the_next_host_byte(
    port: Port, sim: Stm32BootloaderSim
) -> None:
    sim.line.host_turnarounds.clear()
    await exchange(port, command(0x02), 5)  # a turnaround after the sync's ACK
    await asyncio.sleep(0.05)  # a host that thinks for 50 ms before it speaks again
    await exchange(port, command(0x02), 5)
    assert len(sim.line.host_turnarounds) == 2
    assert sim.line.host_turnarounds[1] >= 0.05
    sim.place_new_board()
    assert not sim.line.host_turnarounds  # every board starts a fresh account

async def test_place_new_board_gives_a_blank_part_with_a_new_uid(
    port: Port, sim: Stm32BootloaderSim
) -> None:
    old = sim.chip.uid
    sim.chip.flash[0] = 0
    chip = sim.place_new_board(uid=bytes(range(12)))
    assert chip.uid == bytes(range(12)) != old
    assert sim.flash(FLASH_BASE, 1) == b"\xff"
    assert await exchange(port, b"\x7f", 1) == bytes([ACK])


async def test_bay_serves_the_slot_port_only_while_powered(tmp_path: Path) -> None:
    power = {"on": True}
    slot = UartSlot(backend="stm32-uart", name="u1", port=str(tmp_path / "slot"), baud=2_000_000)
    bay = await Stm32Bay.start_for_slot(slot, powered=lambda: power["on"])
    try:
        uid = bay.place_new_board()
        fast = LinkPolicy(reply_timeout_s=0.1)
        unit = Stm32UartProgrammer(port=slot.port, baud=slot.baud, parity=slot.parity, policy=fast)
        await unit.connect(ConnectOptions(target="stm32f4"))  # a pty: opened 8N1
        assert await unit.read_unique_id() == uid
        await unit.disconnect()
        power["on"] = False
        with pytest.raises(ProbeLost):
            await unit.connect(ConnectOptions(target="stm32f4"))
        await unit.disconnect()
    finally:
        await bay.stop()
    assert not os.path.lexists(slot.port)  # noqa: ASYNC240 - one stat in a test
