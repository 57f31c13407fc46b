"""`fixture-agent run CONFIG` and `fixture-agent check-config CONFIG`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from agent.commands.common import CommandLineError
from agent.config import DEFAULT_STATE_DIR, load_config
from agent.errors import ConfigError


def register(subparsers: Any) -> None:
    """Add the station's commands."""
    run = subparsers.add_parser("run", help="run the station service")
    run.add_argument("config", type=Path, help="station configuration (TOML)")
    run.add_argument("--operator-units", type=int, metavar="N",
                     help="simulated fixture only: let the simulated operator cycle N boards, "
                          "then stop once the plant has acknowledged their records")
    _add_state_dir(run)
    run.set_defaults(handler=_run)
    check = subparsers.add_parser("check-config", help="validate a station configuration")
    check.add_argument("config", type=Path, help="station configuration (TOML)")
    _add_state_dir(check)
    check.set_defaults(handler=_check)


def _add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, metavar="DIR",
                        help="where the station keeps its state (default: $STATE_DIRECTORY as "
                             f"systemd sets it, else {DEFAULT_STATE_DIR})")


def _check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, state_dir=args.state_dir)
    except ConfigError as exc:
        print(f"{exc.source}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    slots = ", ".join(f"{s.name} ({s.backend})" for s in config.slots)
    print(f"OK: station {config.station.id}, broker {config.broker.host}:{config.broker.port}, "
          f"fixture {config.fixture.backend}, slots {slots}, state in {config.storage.dir}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from agent.station.app import run_until_signalled
    from agent.station.console import StationConsole

    try:
        config = load_config(args.config, state_dir=args.state_dir)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{exc.source}: {problem}", file=sys.stderr)
        return 2
    if args.operator_units is not None and config.fixture.backend != "sim":
        print("--operator-units needs fixture.backend = 'sim'", file=sys.stderr)
        return 2
    _writable(config.storage.dir)
    console = StationConsole()
    console.say(f"station {config.station.id}: state in {config.storage.dir}, broker "
                f"{config.broker.host}:{config.broker.port}")
    asyncio.run(run_until_signalled(config, operator_units=args.operator_units, console=console))
    return 0


def _writable(folder: Path) -> None:
    """The state folder exists and takes files, or a sentence saying what to do."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise CommandLineError(
            f"the state folder {folder} is not usable ({exc.strerror}): give --state-dir DIR, "
            "or run as the service (systemd's StateDirectory=fixture-agent)") from None
