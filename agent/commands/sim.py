"""`fixture-agent sim ...`: create and serve simulated boards for dry runs and tests."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
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
    demo_set = sim_sub.add_parser(
        "demo-set", help="the demo product's images and an unsigned manifest naming them",
        description="Write the demo product's images (bootloader, application, file system for "
                    "the simulated nRF52840) to DIR and print a firmware-set manifest naming "
                    "them (file:// URLs, valid for 30 days), ready for `fixture-agent plant "
                    "sign-set`.")
    demo_set.add_argument("--out", type=Path, required=True, metavar="DIR")
    demo_set.add_argument("--set-id", default="sensor-node-lab.1", help="(default: %(default)s)")
    demo_set.add_argument("--sequence", type=int, default=1,
                          help="anti-rollback sequence; raise it for every new set "
                               "(default: %(default)s)")
    demo_set.set_defaults(handler=_demo_set)
    for name in SIMULATOR_COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # that simulator is not built yet
            raise
        module.register(sim_sub)


def _demo_set(args: argparse.Namespace) -> int:
    from agent.demo.images import demo_manifest, write_images

    images = write_images(args.out.resolve())
    manifest = demo_manifest(images, uicr_flag=True, set_id=args.set_id,
                             sequence=args.sequence)
    print(json.dumps(manifest, indent=2))
    return 0
