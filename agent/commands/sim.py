"""`fixture-agent sim ...`: create and serve simulated boards for dry runs and tests."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

# Each simulator contributes `register(sim_subparsers)`; listed here so `sim --help` shows them all.
SIMULATOR_COMMANDS = (
    "agent.sim.nrf52840.cli",
    "agent.sim.stm32_bootloader.cli",
)


def register(subparsers: Any) -> None:
    """Add the `sim` command and every simulator's subcommands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "sim", help="simulated boards: create, inspect, serve"
    )
    sim_sub = parser.add_subparsers(dest="simulator", required=True, metavar="SIMULATOR")
    for name in SIMULATOR_COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # that simulator is not built yet
            raise
        module.register(sim_sub)
