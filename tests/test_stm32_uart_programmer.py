"""The STM32 UART programmer driven through the Programmer protocol, against the simulator."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from agent.errors import (
    EraseFailed,
    FailureCode,
    ProbeLost,
    ProgrammerAborted,
    ProgrammerError,
    ProtocolError,
    TargetLocked,
    WriteFailed,
)
from agent.hw.an3155 import Command, LinkPolicy
from agent.hw.boot_control import BootControl
from agent.hw.programmer import ConnectOptions, Programmer, Region, ValidFlag
from agent.hw.stm32_uart import Stm32UartProgrammer
from agent.sim.stm32_bootloader import Stm32BootloaderSim
from agent.sim.stm32_bootloader.chip import RDP_LEVEL1

FLASH = 0x0800_0000
FAST = LinkPolicy(reply_timeout_s=0.1, write_timeout_s=0.2, retries=2)
F405 = ConnectOptions(target="stm32f405")


@pytest.fixture
async def programmer(sim: Stm32BootloaderSim, tmp_path: Path) -> AsyncIterator[Stm32UartProgrammer]:
    unit = Stm32UartProgrammer(port=str(tmp_path / "tty"), parity="none", policy=FAST)
    yield unit
    await unit.disconnect()


def sparse(size: int) -> bytes:
    """Mostly erased: data in the first and the last 256-byte blocks only."""
    return os.urandom(300) + b"\xff" * (size - 600) + os.urandom(300)


async def test_one_unit_in_cycle_order(
    programmer: Stm32UartProgrammer, sim: Stm32BootloaderSim
) -> None:
    assert isinstance(programmer, Programmer)
    boot = Region("bootloader", FLASH, 16 * 1024 - 100)
    app = Region("application", FLASH + 0x4000, 20 * 1024)  # sectors 1 and 2
    flag_region = Region("valid-flag", FLASH + 0xC000, 4)  # sector 3, alone
    images = {boot: os.urandom(boot.size), app: sparse(app.size)}
    sim.chip.flash[:0x10000] = b"\x00" * 0x10000  # whatever the last firmware left

    connection = await programmer.connect(F405)
    assert not connection.recovered_locked_part
    assert await programmer.read_unique_id() == sim.chip.uid.hex()
    await programmer.erase(flag_region)
    for region, image in images.items():
        await programmer.write(region, image)
    for region, image in images.items():
        back = await programmer.read(region)
        assert hashlib.sha256(back).digest() == hashlib.sha256(image).digest()
    await programmer.set_valid_flag(ValidFlag("flash-word", flag_region.address, 0x5AA5F00D))
    await programmer.lock()

    assert sim.flash(flag_region.address, 4) == (0x5AA5F00D).to_bytes(4, "little")
    assert sim.chip.rdp == RDP_LEVEL1
    erased = [r.size for r in sim.history if r.command == Command.EXTENDED_ERASE]
    assert sum(erased) == 4  # sectors 0..3, each once; nothing beyond the images
    written = [r for r in sim.history if r.command == Command.WRITE_MEMORY and r.address]
    app_blocks = [r for r in written if app.address <= r.address < app.end]
    assert len(app_blocks) == 4  # sparse: only the blocks holding data (300 B spans 2 each)


async def test_a_write_that_does_not_take_shows_in_the_read_back(
    programmer: Stm32UartProgrammer, sim: Stm32BootloaderSim
) -> None:
    region = Region("application", FLASH, 4096)
    image = os.urandom(region.size)
    await programmer.connect(F405)
    sim.faults.lost_writes = 1
    await programmer.write(region, image)  # every block was ACKed
    back = await programmer.read(region)
    assert hashlib.sha256(back).digest() != hashlib.sha256(image).digest()
    assert back[:256] == b"\xff" * 256
    assert back[256:] == image[256:]


async def test_locked_part_is_refused_and_left_intact(
    programmer: Stm32UartProgrammer, sim: Stm32BootloaderSim
) -> None:
    sim.chip.flash[:4] = b"\x12\x34\x56\x78"
    sim.chip.rdp = RDP_LEVEL1
    with pytest.raises(TargetLocked):
        await programmer.connect(F405)
    assert sim.chip.protected
    assert sim.flash(FLASH, 4) == b"\x12\x34\x56\x78"  # never erased without permission


async def test_locked_part_is_recovered_when_allowed(
    programmer: Stm32UartProgrammer, sim: Stm32BootloaderSim
) -> None:
    sim.chip.flash[:4] = b"\x12\x34\x56\x78"
    sim.chip.rdp = RDP_LEVEL1
    connection = await programmer.connect(ConnectOptions(target="stm32f4", recover_locked=True))
    assert connection.recovered_locked_part
    assert not sim.chip.protected
    assert sim.flash(FLASH, 4) == b"\xff" * 4
    assert await programmer.read_unique_id() == sim.chip.uid.hex()
    await programmer.write(Region("app", FLASH, 8), b"\x01" * 8)  # flash is known blank now
    assert not [r for r in sim.history if r.command == Command.EXTENDED_ERASE]


async def test_wrong_target_is_a_target_mismatch(programmer: Stm32UartProgrammer) -> None:
    with pytest.raises(ProtocolError) as caught:
        await programmer.connect(ConnectOptions(target="nrf52840"))
    assert caught.value.code is FailureCode.TARGET_MISMATCH
    assert "0x413" in str(caught.value)


async def test_rewriting_a_region_that_shares_a_sector_is_refused(
    programmer: Stm32UartProgrammer, sim: Stm32BootloaderSim
) -> None:
    first = Region("application", FLASH + 0x4000, 0x1000)
    second = Region("manufacturing", FLASH + 0x5000, 0x100)  # also sector 1
    await programmer.connect(F405)
    await programmer.write(first, b"\x11" * first.size)
    await programmer.write(second, b"\x22" * second.size)  # sector already blank there
    with pytest.raises(EraseFailed) as caught:
        await programmer.write(first, b"\x33" * first.size)
    assert "sector 1" in str(caught.value)
    assert "manufacturing" in str(caught.value)
    assert sim.flash(second.address, 4) == b"\x22" * 4


async def test_reserved_flash_is_never_erased(sim: Stm32BootloaderSim, tmp_path: Path) -> None:
    calibration = Region("calibration", FLASH + 0xFF00, 0x100)  # end of sector 3
    unit = Stm32UartProgrammer(
        port=str(tmp_path / "tty"), parity="none", policy=FAST, reserved=[calibration]
    )
    await unit.connect(F405)
    with pytest.raises(EraseFailed, match="calibration"):
        await unit.write(Region("app", FLASH + 0xC000, 0x100), b"\x00" * 0x100)
    await unit.disconnect()


async def test_valid_flag_needs_erased_flash(
    programmer: Stm32UartProgrammer, sim: Stm32BootloaderSim
) -> None:
    sim.chip.flash[0xC000:0xC004] = b"\x00\x00\x00\x00"
    await programmer.connect(F405)
    with pytest.raises(WriteFailed) as caught:
        await programmer.set_valid_flag(ValidFlag("flash-word", FLASH + 0xC000, 1))
    assert caught.value.code is FailureCode.VALID_FLAG_FAILED


async def test_persistent_nacks_fail_the_write_with_its_address(
    programmer: Stm32UartProgrammer, sim: Stm32BootloaderSim
) -> None:
    await programmer.connect(F405)
    sim.faults.nack_write_data = 10
    with pytest.raises(WriteFailed) as caught:
        await programmer.write(Region("app", FLASH, 512), b"\x00" * 512)
    assert caught.value.address == FLASH
    assert caught.value.region == "app"


async def test_reset_mid_write_is_probe_lost(
    programmer: Stm32UartProgrammer, sim: Stm32BootloaderSim
) -> None:
    await programmer.connect(F405)
    sim.faults.reset_in_command = Command.WRITE_MEMORY
    with pytest.raises(ProbeLost, match="reset"):
        await programmer.write(Region("app", FLASH, 512), b"\x00" * 512)


async def test_abort_stops_an_operation_in_flight(tmp_path: Path) -> None:
    slow = Stm32BootloaderSim(baud=115200, parity="none")
    async with slow.serving(tmp_path / "slow"):
        unit = Stm32UartProgrammer(port=str(tmp_path / "slow"), parity="none", policy=FAST)
        await unit.connect(F405)
        region = Region("app", FLASH, 64 * 1024)  # about 6 s at 115200
        write = asyncio.create_task(unit.write(region, os.urandom(region.size)))
        for _ in range(500):  # until the first block is on its way
            if [r for r in slow.history if r.command == Command.WRITE_MEMORY]:
                break
            await asyncio.sleep(0.01)
        await unit.abort()
        with pytest.raises(ProgrammerAborted):
            await asyncio.wait_for(write, 5)  # a hang guard, not a timing claim
        with pytest.raises(ProgrammerAborted):
            await unit.read(region)
        await unit.connect(F405)  # a new connect clears the abort
        assert await unit.read_unique_id() == slow.chip.uid.hex()
        await unit.disconnect()


async def test_boot_lines_enter_and_leave_the_bootloader(
    sim: Stm32BootloaderSim, tmp_path: Path
) -> None:
    factory = MockFactory()
    boot = BootControl(boot0_pin=5, nreset_pin=6, pin_factory=factory, boot_settle_s=0)
    unit = Stm32UartProgrammer(port=str(tmp_path / "tty"), parity="none", policy=FAST, boot=boot)
    await unit.connect(F405)
    boot0, nreset = factory.pin(5), factory.pin(6)
    assert boot0.state == 1
    assert [s.state for s in nreset.states] == [0, 1, 0, 1]  # init high, reset pulse, released
    await unit.disconnect()
    assert boot0.state == 0
    boot.close()


async def test_boot_control_without_pins_does_nothing() -> None:
    boot = BootControl(boot0_pin=None, nreset_pin=None, pin_factory=MockFactory())
    assert not boot.configured
    await boot.enter_bootloader()
    await boot.leave_bootloader(run_application=True)


async def test_a_refused_readout_protect_is_a_failed_lock(
    programmer: Stm32UartProgrammer, sim: Stm32BootloaderSim
) -> None:
    await programmer.connect(F405)
    sim.faults.nack_commands[Command.READOUT_PROTECT] = 10  # every retry refused
    with pytest.raises(ProgrammerError) as failure:
        await programmer.lock()
    assert failure.value.code == FailureCode.LOCK_FAILED
    assert sim.chip.rdp != RDP_LEVEL1
