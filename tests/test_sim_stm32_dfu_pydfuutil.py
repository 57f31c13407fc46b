"""An independent DFU host against the simulated bootloader: pydfuutil (a Python port of dfu-util,
from PyPI, used nowhere else here) writes and the project's client reads back, and the other way
round; the bytes must match. pydfuutil runs as its own command line in a child process
(``tests/dfu_host.py`` explains how it is pointed at the simulated bus).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

from agent.hw.programmer import ConnectOptions, Region
from agent.hw.stm32_dfu import Stm32DfuProgrammer
from agent.sim.stm32_dfu import DfuBoard, SimDfuDevice, SimUsbBus

ROOT = Path(__file__).resolve().parent.parent
FLASH = 0x0800_0000
F405 = ConnectOptions(target="stm32f405")


def pydfuutil(state: Path, *arguments: str) -> str:
    """Run pydfuutil's command line on the board saved in ``state``; its output."""
    result = subprocess.run([sys.executable, "-m", "tests.dfu_host", str(state), *arguments],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def client_for(board: DfuBoard) -> Stm32DfuProgrammer:
    """The project's client, for ``board`` plugged into a simulated hub."""
    hub = SimUsbBus()
    hub.attach(SimDfuDevice(port_numbers=(1, 4), board=board))
    return Stm32DfuProgrammer(usb_path="1-1.4", usb_backend=hub)


def with_gaps(size: int) -> bytes:
    """Random bytes with whole erased 2 KiB blocks in between (the client skips those)."""
    image = bytearray(os.urandom(size))
    for start in range(4096, size - 2048, 8192):
        image[start : start + 2048] = b"\xff" * 2048
    return bytes(image)


async def test_pydfuutil_writes_and_the_client_reads_back(tmp_path: Path) -> None:
    image = os.urandom(40 * 1024 + 123)  # sectors 0..2, and a last block that is not whole
    (tmp_path / "image.bin").write_bytes(image)
    state = tmp_path / "board.pickle"
    state.write_bytes(pickle.dumps(DfuBoard.blank()))

    output = pydfuutil(state, "-a", "0", "-s", f"0x{FLASH:08x}:leave", "-D",
                       str(tmp_path / "image.bin"))
    assert "File downloaded successfully" in output

    board = pickle.loads(state.read_bytes())
    unit = client_for(board)
    await unit.connect(F405)
    back = await unit.read(Region("image", FLASH, len(image)))
    uid = await unit.read_unique_id()
    await unit.disconnect()
    unit.shutdown()
    assert back == image
    assert uid == board.chip.uid.hex()


async def test_the_client_writes_and_pydfuutil_reads_back(tmp_path: Path) -> None:
    image = with_gaps(64 * 1024 + 2048)  # sectors 0..4
    board = DfuBoard.blank()
    unit = client_for(board)
    await unit.connect(F405)
    await unit.write(Region("image", FLASH, len(image)), image)
    uid = await unit.read_unique_id()
    await unit.disconnect()
    unit.shutdown()
    state = tmp_path / "board.pickle"
    state.write_bytes(pickle.dumps(board))

    pydfuutil(state, "-a", "0", "-s", f"0x{FLASH:08x}:{len(image)}", "-U",
              str(tmp_path / "back.bin"))
    # the UID is outside the flash layout the alt setting declares: dfu-util needs "force" too
    pydfuutil(state, "-a", "0", "-s", "0x1fff7a10:force:12", "-U", str(tmp_path / "uid.bin"))
    assert (tmp_path / "back.bin").read_bytes() == image
    assert (tmp_path / "uid.bin").read_bytes().hex() == uid
