"""`fixture-agent demo --units N`: the whole station on a simulated fixture."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from agent.commands.common import CommandLineError


def register(subparsers: Any) -> None:
    """Add the demo command."""
    demo = subparsers.add_parser("demo", help="run a simulated station end to end")
    demo.add_argument("--units", type=int, default=5, help="units to program (default 5)")
    demo.add_argument("--workdir", type=Path, help="keep the run's files here (default: a "
                      "temporary folder, removed afterwards)")
    demo.add_argument("--slots", type=int, default=1, metavar="N",
                      help="a panel of N slots programmed in parallel, each in its own worker "
                           "process, with its own lamps (default 1; units round up to whole "
                           "panels)")
    demo.add_argument("--backend", choices=("pyocd", "stm32-uart", "sim-flash"),
                      default="pyocd",
                      help="slot backend: real pyOCD on a virtual nRF52840 (default), the STM32 "
                           "ROM bootloader over a simulated UART, or the in-memory target")
    fleet = demo.add_argument_group("fleet (yield-gated rollouts and the plant console)")
    fleet.add_argument("--fleet", type=int, metavar="N",
                       help="run N simulated stations, the recorder, the rollout engine and the "
                            "console; roll out a bad set (halted at wave 1 and rolled back) and "
                            "a good one (reaches every station)")
    fleet.add_argument("--fault-rate", type=float, default=0.5, metavar="R",
                       help="share of units the bad set's image fails on (default: %(default)s)")
    fleet.add_argument("--console", default="127.0.0.1:0", metavar="HOST:PORT",
                       help="where the console listens (default: a free port on 127.0.0.1)")
    fleet.add_argument("--stay", action="store_true",
                       help="keep the fleet and the console running after the rollouts")
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from agent.demo.run import run_demo

    if args.fleet is not None:
        return _fleet(args)
    if args.units < 1:
        raise CommandLineError("--units: expected at least 1")
    if not 1 <= args.slots <= 16:
        raise CommandLineError(f"--slots: expected 1 to 16 slots, found {args.slots}")
    if args.workdir is not None:
        return run_demo(units=args.units, workdir=args.workdir.resolve(), backend=args.backend,
                        slots=args.slots)
    with tempfile.TemporaryDirectory(prefix="fixture-agent-demo-") as tmp:
        return run_demo(units=args.units, workdir=Path(tmp), backend=args.backend, kept=False,
                        slots=args.slots)


def _fleet(args: argparse.Namespace) -> int:
    from agent.commands.recorder import console_address
    from agent.demo.fleet import FleetOptions, run_fleet

    if not 2 <= args.fleet <= 24:
        raise CommandLineError(f"--fleet: expected 2 to 24 stations, found {args.fleet}")
    if not 0 <= args.fault_rate <= 1:
        raise CommandLineError(f"--fault-rate: expected 0 to 1, found {args.fault_rate}")
    options = FleetOptions(stations=args.fleet, fault_rate=args.fault_rate,
                           console=console_address(args.console))
    if args.workdir is not None:
        return run_fleet(options, workdir=args.workdir.resolve(), stay=args.stay)
    with tempfile.TemporaryDirectory(prefix="fixture-agent-fleet-") as tmp:
        return run_fleet(options, workdir=Path(tmp), stay=args.stay)
