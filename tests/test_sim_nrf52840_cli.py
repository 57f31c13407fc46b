"""The boards are visible to other processes: the real ``pyocd`` command line lists, programs and
reads them, and what one process writes the next one reads (issue 3, point 2)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from intelhex import IntelHex

from agent.hw.programmer import ConnectOptions, Region
from agent.hw.pyocd_programmer import PyOcdProgrammer
from agent.sim.nrf52840 import cli as sim_cli
from agent.sim.nrf52840 import read_board_memory, set_board_dir

BIN = Path(sys.executable).parent
UID = "cli1"


def run(root: Path, *argv: str) -> str:
    env = os.environ | {"FIXTURE_AGENT_SIM_DIR": str(root)}
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=120, cwd=root, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def create_board(argv: list[str]) -> None:
    """`fixture-agent sim nrf52840 ...` through the subcommand's own registration."""
    parser = argparse.ArgumentParser()
    sim_cli.register(parser.add_subparsers(dest="simulator"))
    args = parser.parse_args(["nrf52840", *argv])
    assert args.handler(args) == 0


async def test_pyocd_command_line_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "boards"
    create_board(["create", "--dir", str(root), "--uid", UID, "--device-id", "00c0ffee12345678"])
    assert UID in run(root, str(BIN / "pyocd"), "list")

    # pyocd load of an Intel HEX with two runs (one of them in UICR)
    app = bytes(range(256)) * 24
    ihex = IntelHex()
    ihex.frombytes(app, offset=0x2000)
    ihex.frombytes(b"\x78\x56\x34\x12", offset=0x10001088)
    ihex.write_hex_file(str(tmp_path / "app.hex"))
    run(
        root,
        str(BIN / "pyocd"),
        "load",
        "-u",
        f"sim:{UID}",
        "-t",
        "nrf52840",
        str(tmp_path / "app.hex"),
    )
    assert read_board_memory(root, UID, 0x2000, len(app)) == app
    assert read_board_memory(root, UID, 0x10001088, 4) == b"\x78\x56\x34\x12"

    # this process reads what pyocd wrote, and writes something pyocd then reads
    set_board_dir(root)
    try:
        prog = PyOcdProgrammer(probe_id=f"sim:{UID}")
        await prog.connect(ConnectOptions(target="nrf52840"))
        assert await prog.read(Region("app", 0x2000, len(app))) == app
        assert await prog.read_unique_id() == "00c0ffee12345678"
        mine = bytes(reversed(range(256))) * 16
        await prog.write(Region("mine", 0x40000, len(mine)), mine)
        await prog.disconnect()
        prog.shutdown()
    finally:
        set_board_dir(None)
        os.environ.pop("FIXTURE_AGENT_SIM_DIR", None)

    saved = tmp_path / "saved.bin"
    run(
        root,
        str(BIN / "pyocd"),
        "cmd",
        "-u",
        f"sim:{UID}",
        "-t",
        "nrf52840",
        "-c",
        f"savemem 0x40000 {len(mine)} {saved}",
    )
    assert saved.read_bytes() == mine


def test_create_count_builds_a_panel_of_probes_pyocd_lists(tmp_path: Path) -> None:
    root = tmp_path / "boards"
    root.mkdir()
    run(root, sys.executable, "-m", "agent", "sim", "nrf52840", "create", "--dir", str(root),
        "--uid", "panel", "--count", "4")
    listed = run(root, sys.executable, "-m", "pyocd", "list")
    assert all(f"panel-{n}" in listed for n in range(1, 5))
