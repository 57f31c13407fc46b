"""`fixture-agent run CONFIG` and `fixture-agent check-config CONFIG`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from agent.config import load_config
from agent.errors import ConfigError


def register(subparsers: Any) -> None:
    """Add the station's commands."""
    run = subparsers.add_parser("run", help="run the station service")
    run.add_argument("config", type=Path, help="station configuration (TOML)")
    run.add_argument("--operator-units", type=int, metavar="N",
                     help="simulated fixture only: let the simulated operator cycle N boards")
    run.set_defaults(handler=_run)
    check = subparsers.add_parser("check-config", help="validate a station configuration")
    check.add_argument("config", type=Path, help="station configuration (TOML)")
    check.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"{exc.source}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    slots = ", ".join(f"{s.name} ({s.backend})" for s in config.slots)
    print(f"OK: station {config.station.id}, broker {config.broker.host}:{config.broker.port}, "
          f"fixture {config.fixture.backend}, slots {slots}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from agent.station.app import run_until_signalled

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{exc.source}: {problem}", file=sys.stderr)
        return 2
    if args.operator_units is not None and config.fixture.backend != "sim":
        print("--operator-units needs fixture.backend = 'sim'", file=sys.stderr)
        return 2
    asyncio.run(run_until_signalled(config, operator_units=args.operator_units))
    return 0
