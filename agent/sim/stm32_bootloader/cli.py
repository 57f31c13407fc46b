"""`fixture-agent sim uart-bootloader`: serve a simulated STM32F4 bootloader on a pty."""

from __future__ import annotations

import argparse
import asyncio
import selectors
import signal
from pathlib import Path
from typing import Any

from agent.sim.stm32_bootloader.sim import Stm32BootloaderSim


def register(sim_subparsers: Any) -> None:
    """Add the ``uart-bootloader`` subcommand."""
    parser: argparse.ArgumentParser = sim_subparsers.add_parser(
        "uart-bootloader",
        help="an STM32F4 ROM bootloader (AN3155) on a pty, at an emulated line rate",
        description="Serve until SIGINT/SIGTERM; SIGUSR1 places a new blank board.",
    )
    parser.add_argument("--link", type=Path, required=True, help="symlink to create to the pty")
    parser.add_argument("--baud", type=int, default=115200, help="emulated line rate")
    parser.add_argument(
        "--parity",
        choices=("even", "none"),
        default="even",
        help="emulated framing: even = 8E1 (11 bits a byte), none = 8N1 (10)",
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="turnaround per response")
    parser.add_argument("--uid", type=bytes.fromhex, default=None, help="12-byte UID as hex")
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    sim = Stm32BootloaderSim(
        baud=args.baud, parity=args.parity, latency_ms=args.latency_ms, uid=args.uid
    )
    with asyncio.Runner(loop_factory=precise_timer_loop) as runner:
        runner.run(serve_until_stopped(sim, args.link))
    return 0


def precise_timer_loop() -> asyncio.AbstractEventLoop:
    """An event loop whose timers wake within microseconds, not epoll's whole milliseconds.

    Line-rate pacing sleeps for fractions of a millisecond; epoll rounds every wait up to the next
    millisecond, which would add up to 1 ms per turnaround. select() takes microseconds and the
    simulator watches only a couple of descriptors.
    """
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


async def serve_until_stopped(sim: Stm32BootloaderSim, link: Path) -> None:
    """Serve ``sim`` at ``link`` until SIGINT or SIGTERM; SIGUSR1 swaps in a new blank board."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, sim.place_new_board)
    async with sim.serving(link):
        print(f"serving {sim.port} at {link} (uid {sim.chip.uid.hex()})", flush=True)
        await stop.wait()
