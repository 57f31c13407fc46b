"""Debian's stm32flash, the reference AN3155 host, against the simulated bootloader.

stm32flash runs as a subprocess while the simulator serves on this test's event loop. A pty
cannot keep even parity, hence ``-m 8n1``; the simulator's line rate is set high to keep it quick.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.hw.programmer import ConnectOptions, Region
from agent.hw.stm32_uart import Stm32UartProgrammer
from agent.sim.stm32_bootloader import Stm32BootloaderSim

FLASH = 0x0800_0000
EXTENDED_ERASE = 0x44


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Stm32BootloaderSim]:
    board = Stm32BootloaderSim(baud=2_000_000, parity="none")
    async with board.serving(tmp_path / "tty"):
        yield board


async def stm32flash(*args: str) -> str:
    assert shutil.which("stm32flash"), "Debian's stm32flash is a test dependency"
    process = await asyncio.create_subprocess_exec(
        "stm32flash",
        "-m",
        "8n1",
        "-b",
        "115200",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    text = out.decode(errors="replace")
    assert process.returncode == 0, text
    return text


async def test_stm32flash_writes_and_verifies_an_image(
    sim: Stm32BootloaderSim, tmp_path: Path
) -> None:
    image = os.urandom(20 * 1024 + 100)  # spans sectors 0 and 1, ends mid-block
    (tmp_path / "image.bin").write_bytes(image)
    sim.chip.flash[0x8000:0x8010] = b"\x00" * 16  # sector 2 is outside the image

    out = await stm32flash("-w", str(tmp_path / "image.bin"), "-v", str(tmp_path / "tty"))

    assert "Device ID" in out
    assert "0x0413" in out
    assert sim.flash(FLASH, len(image)) == image
    erases = [record for record in sim.history if record.command == EXTENDED_ERASE]
    assert [record.size for record in erases] == [2]  # sectors 0 and 1, one Extended Erase
    assert sim.flash(FLASH + 0x8000, 16) == b"\x00" * 16  # untouched: not in the image


async def test_stm32flash_reads_back_what_the_agent_wrote(
    sim: Stm32BootloaderSim, tmp_path: Path
) -> None:
    image = os.urandom(3000)
    region = Region("app", FLASH, len(image))
    programmer = Stm32UartProgrammer(port=str(tmp_path / "tty"), parity="none")
    await programmer.connect(ConnectOptions(target="stm32f407"))
    await programmer.write(region, image)
    await programmer.disconnect()

    dump = tmp_path / "dump.bin"
    await stm32flash("-r", str(dump), "-S", f"0x{FLASH:08X}:{len(image)}", str(tmp_path / "tty"))

    assert dump.read_bytes() == image
