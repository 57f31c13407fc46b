"""The AN3155 client against the simulated bootloader: every command, and recovery from faults."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.errors import ProbeLost
from agent.hw.an3155 import (
    An3155Client,
    BootloaderResetError,
    Command,
    LinkPolicy,
    NackError,
    address_frame,
    checksum,
)
from agent.hw.stm32_uart import open_serial
from agent.sim.stm32_bootloader import Stm32BootloaderSim

FLASH = 0x0800_0000
SRAM = 0x2000_0000
UID = 0x1FFF_7A10
# Short timeouts: fault tests wait for them.
FAST = LinkPolicy(reply_timeout_s=0.1, write_timeout_s=0.2, retries=3)


@pytest.fixture
async def client(sim: Stm32BootloaderSim, tmp_path: Path) -> AsyncIterator[An3155Client]:
    link = await open_serial(str(tmp_path / "tty"), baud=2_000_000, parity="none", policy=FAST)
    await link.sync()
    await link.get()
    yield link
    await link.close()


def test_frames_carry_xor_checksums() -> None:
    assert address_frame(0x0800_0100) == bytes([0x08, 0x00, 0x01, 0x00, 0x09])
    assert checksum(bytes([0x03, 1, 2, 3, 4])) == 0x03 ^ 1 ^ 2 ^ 3 ^ 4


async def test_identification_commands(client: An3155Client, sim: Stm32BootloaderSim) -> None:
    assert client.info.version == 0x31
    needed = {Command.GET, Command.READ_MEMORY, Command.WRITE_MEMORY, Command.EXTENDED_ERASE}
    assert needed <= client.info.commands
    assert await client.get_version() == (0x31, 0, 0)
    assert await client.get_id() == 0x413
    assert await client.read_memory(UID, 12) == sim.chip.uid


async def test_sync_accepts_a_part_that_is_already_synced(client: An3155Client) -> None:
    await client.sync()
    assert await client.get_id() == 0x413


async def test_write_read_and_page_erase(client: An3155Client, sim: Stm32BootloaderSim) -> None:
    await client.write_memory(FLASH, bytes(range(256)))
    await client.write_memory(FLASH + 0x4000, b"\x01\x02\x03")  # padded to a word with 0xFF
    assert await client.read_memory(FLASH, 256) == bytes(range(256))
    assert sim.flash(FLASH + 0x4000, 4) == b"\x01\x02\x03\xff"
    await client.erase([1])
    assert sim.flash(FLASH + 0x4000, 4) == b"\xff" * 4
    assert sim.flash(FLASH, 4) == bytes(range(4))
    await client.mass_erase()
    assert sim.flash(FLASH, 4) == b"\xff" * 4


async def test_legacy_erase_on_a_pre_v3_bootloader(tmp_path: Path) -> None:
    board = Stm32BootloaderSim(baud=2_000_000, parity="none", erase_command=Command.ERASE)
    async with board.serving(tmp_path / "tty"):
        link = await open_serial(str(tmp_path / "tty"), baud=2_000_000, parity="none", policy=FAST)
        await link.sync()
        assert Command.ERASE in (await link.get()).commands
        await link.write_memory(FLASH, b"\x00" * 4)
        await link.write_memory(FLASH + 0x8000, b"\x00" * 4)
        await link.erase([0])
        assert board.history[-1].command == Command.ERASE
        assert board.flash(FLASH, 4) == b"\xff" * 4
        assert board.flash(FLASH + 0x8000, 4) == b"\x00" * 4
        await link.mass_erase()
        assert board.flash(FLASH + 0x8000, 4) == b"\xff" * 4
        await link.close()


async def test_invalid_address_is_reported_not_retried_forever(client: An3155Client) -> None:
    with pytest.raises(NackError) as caught:
        await client.read_memory(0x6000_0000, 4)
    assert caught.value.stage == "address"
    assert caught.value.address == 0x6000_0000


async def test_go_starts_the_application(client: An3155Client, sim: Stm32BootloaderSim) -> None:
    await client.go(FLASH)
    assert sim.history[-1].command == Command.GO
    assert sim.history[-1].address == FLASH
    with pytest.raises(ProbeLost):  # the bootloader no longer answers
        await client.get_id()


async def test_readout_protect_then_unprotect(
    client: An3155Client, sim: Stm32BootloaderSim
) -> None:
    await client.write_memory(FLASH, b"\x00" * 4)
    await client.readout_protect()
    await client.sync()
    assert sim.chip.protected
    with pytest.raises(NackError) as caught:
        await client.read_memory(FLASH, 4)
    assert caught.value.stage == "command"
    await client.readout_unprotect()
    await client.sync()
    assert not sim.chip.protected
    assert await client.read_memory(FLASH, 4) == b"\xff" * 4  # unprotect mass-erased


async def test_nacked_command_is_retried(client: An3155Client, sim: Stm32BootloaderSim) -> None:
    sim.faults.nack_commands[Command.READ_MEMORY] = 2
    assert await client.read_memory(UID, 12) == sim.chip.uid


async def test_nacks_beyond_the_retry_budget_fail(
    client: An3155Client, sim: Stm32BootloaderSim
) -> None:
    sim.faults.nack_write_data = FAST.retries + 1
    with pytest.raises(NackError) as caught:
        await client.write_memory(FLASH, b"\x00" * 8)
    assert caught.value.stage == "data"
    assert sim.flash(FLASH, 8) == b"\xff" * 8


async def test_byte_lost_toward_the_part_is_recovered(
    client: An3155Client, sim: Stm32BootloaderSim
) -> None:
    data = bytes(range(256))
    sim.faults.drop_rx_at = 100  # inside the data frame: the part waits for one more byte
    await client.write_memory(FLASH, data)
    assert sim.flash(FLASH, 256) == data
    assert await client.get_id() == 0x413  # and the link is in step afterwards


async def test_byte_lost_toward_the_host_is_recovered(
    client: An3155Client, sim: Stm32BootloaderSim
) -> None:
    await client.write_memory(FLASH, bytes(range(256)))
    sim.faults.drop_tx_at = 50  # inside the read data
    assert await client.read_memory(FLASH, 256) == bytes(range(256))
    assert await client.get_id() == 0x413


async def test_reset_mid_command_is_a_clear_error(
    client: An3155Client, sim: Stm32BootloaderSim
) -> None:
    sim.faults.reset_in_command = Command.WRITE_MEMORY
    with pytest.raises(BootloaderResetError) as caught:
        await client.write_memory(FLASH, b"\x00" * 4)
    assert "reset during WRITE_MEMORY" in str(caught.value)
    assert caught.value.address == FLASH
    assert sim.flash(FLASH, 4) == b"\xff" * 4


async def test_silent_part_is_probe_lost(tmp_path: Path) -> None:
    board = Stm32BootloaderSim(baud=2_000_000, parity="none")
    async with board.serving(tmp_path / "tty"):
        link = await open_serial(str(tmp_path / "tty"), baud=2_000_000, parity="none", policy=FAST)
        await link.sync()
        await link.go(FLASH)  # the application now owns the UART and ignores us
        with pytest.raises(ProbeLost, match="no answer while resynchronising after GET_ID"):
            await link.get_id()
        await link.close()


async def test_a_closed_link_never_writes_to_a_reused_descriptor(client: An3155Client) -> None:
    fileno = client._fileno
    assert fileno is not None  # frames go straight to the port's descriptor while it is open
    read_end, write_end = os.pipe()
    await client.close()
    os.dup2(write_end, fileno)  # the closed port's number now names another file
    try:
        with pytest.raises(ProbeLost, match="serial port closed"):
            await client.get_id()
        os.set_blocking(read_end, False)
        with pytest.raises(BlockingIOError):
            os.read(read_end, 16)  # nothing was written into the file that took the number
    finally:
        for descriptor in {read_end, write_end, fileno}:
            os.close(descriptor)
