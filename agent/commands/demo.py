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
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from agent.demo.run import run_demo

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
