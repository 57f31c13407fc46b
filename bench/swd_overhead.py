"""What the agent adds on top of pyOCD when programming over SWD (issue 3, point 7).

One run, one virtual nRF52840 probe, the same image, a fresh blank board for every unit:

* agent: PyOcdProgrammer connect + unique id + write + read-back (SHA-256) + disconnect per unit,
  against a bare pyOCD session + FileProgrammer + read-back per unit (target: at most 1.10x);
* agent against running ``pyocd load`` once per unit, as many lines script it today (target: at
  least 3x faster for a 64 KiB image);
* with the timing model on (real flash and SWD times): the agent's cycle over the physical floor,
  i.e. page erases (~21 ms each), word writes (41 us each) and the read-back over SWD at 46 clocks
  per word; the writes' own SWD traffic overlaps the flash time, as on a real probe.

Absolute times on shared machines are noise; the ratios are the figures. The last line printed is
one JSON object with every figure.

    .venv/bin/python bench/swd_overhead.py [--units 5] [--cli-units 3] [--kib 64]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyocd  # noqa: F401  - import pyOCD before the plugin package (see plugin.py)
from pyocd.core.helpers import ConnectHelper
from pyocd.flash.file_programmer import FileProgrammer

from agent.hw.programmer import ConnectOptions, Region
from agent.hw.pyocd_programmer import PyOcdProgrammer
from agent.sim.nrf52840 import place_new_board, set_board_dir, set_timing
from agent.sim.nrf52840.timing import PAGE_ERASE_TYPICAL_S, SWD_CLOCKS_PER_ACCESS, WORD_WRITE_S

UID = "bench"
FREQUENCY_HZ = 4_000_000
BASE = 0x0


async def agent_unit(prog: PyOcdProgrammer, image: bytes) -> float:
    """One unit through the agent's backend; returns seconds."""
    region = Region("app", BASE, len(image))
    start = time.perf_counter()
    await prog.connect(ConnectOptions(target="nrf52840"))
    await prog.read_unique_id()
    await prog.write(region, image)
    if hashlib.sha256(await prog.read(region)).digest() != hashlib.sha256(image).digest():
        raise SystemExit("agent read-back mismatch")
    await prog.disconnect()
    return time.perf_counter() - start


def bare_unit(path: Path, image: bytes) -> float:
    """One unit with bare pyOCD: session, FileProgrammer, read-back, close."""
    start = time.perf_counter()
    with ConnectHelper.session_with_chosen_probe(
        unique_id=f"sim:{UID}",
        target_override="nrf52840",
        options={
            "frequency": FREQUENCY_HZ,
            "auto_unlock": False,
            "no_config": True,
            "hide_programming_progress": True,
        },
    ) as session:
        FileProgrammer(session).program(str(path), base_address=BASE)
        if bytes(session.target.read_memory_block8(BASE, len(image))) != image:
            raise SystemExit("bare read-back mismatch")
    return time.perf_counter() - start


def cli_unit(path: Path, root: Path) -> float:
    """One unit the way scripts do it: one ``pyocd load`` process per unit."""
    pyocd_exe = Path(sys.executable).parent / "pyocd"
    env = os.environ | {"FIXTURE_AGENT_SIM_DIR": str(root)}
    start = time.perf_counter()
    subprocess.run(
        [
            str(pyocd_exe),
            "load",
            "-u",
            f"sim:{UID}",
            "-t",
            "nrf52840",
            "-f",
            str(FREQUENCY_HZ),
            "-a",
            hex(BASE),
            str(path),
        ],
        env=env,
        check=True,
        capture_output=True,
        cwd=root,
    )
    return time.perf_counter() - start


def physical_floor_s(size: int) -> float:
    """Erase + program at the flash's own speed, then read back over SWD at the probe clock."""
    pages = -(-size // 4096)
    words = -(-size // 4)
    read_back = words * SWD_CLOCKS_PER_ACCESS / FREQUENCY_HZ
    return pages * PAGE_ERASE_TYPICAL_S + words * WORD_WRITE_S + read_back


async def measure(args: argparse.Namespace, root: Path) -> dict[str, float]:
    image = os.urandom(args.kib * 1024)
    path = root / "image.bin"
    path.write_bytes(image)
    prog = PyOcdProgrammer(probe_id=f"sim:{UID}", frequency_hz=FREQUENCY_HZ)
    agent, bare, cli = [], [], []
    await agent_unit(prog, image)  # warm-up: imports, analyzer upload paths
    for _ in range(args.units):  # interleaved so drift on the machine hits both alike
        place_new_board(root, UID)
        agent.append(await agent_unit(prog, image))
        place_new_board(root, UID)
        bare.append(await asyncio.to_thread(bare_unit, path, image))
    for _ in range(args.cli_units):
        place_new_board(root, UID)
        cli.append(cli_unit(path, root))
    set_timing(True)
    timed = []
    for _ in range(args.timed_units):
        place_new_board(root, UID)
        timed.append(await agent_unit(prog, image))
    set_timing(False)
    prog.shutdown()
    agent_s, bare_s = statistics.median(agent), statistics.median(bare)
    cli_s, timed_s = statistics.median(cli), statistics.median(timed)
    floor = physical_floor_s(len(image))
    return {
        "image_kib": args.kib,
        "units": args.units,
        "agent_cycle_s": round(agent_s, 4),
        "bare_pyocd_s": round(bare_s, 4),
        "agent_over_bare": round(agent_s / bare_s, 3),
        "pyocd_load_cli_s": round(cli_s, 4),
        "cli_over_agent": round(cli_s / agent_s, 2),
        "timed_agent_cycle_s": round(timed_s, 4),
        "physical_floor_s": round(floor, 4),
        "timed_over_floor": round(timed_s / floor, 3),
        "target_agent_over_bare_max": 1.10,
        "target_cli_over_agent_min": 3.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=5)
    parser.add_argument("--cli-units", type=int, default=3)
    parser.add_argument("--timed-units", type=int, default=2)
    parser.add_argument("--kib", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="swd-bench-") as tmp:
        root = Path(tmp)
        set_board_dir(root)
        set_timing(False)
        place_new_board(root, UID)
        figures = asyncio.run(measure(args, root))
    for key, value in figures.items():
        print(f"{key:28} {value}")
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
