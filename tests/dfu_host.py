"""Runs pydfuutil's command line (a Python port of dfu-util) against a simulated DFU board.

    python -m tests.dfu_host STATE.pickle PYDFUUTIL-ARGUMENTS...

The board (a pickled :class:`~agent.sim.stm32_dfu.DfuBoard`) is plugged into a simulated USB bus,
pydfuutil is pointed at that bus through its own module-level backend setting
(``DEFAULT_BACKEND``, which it passes to every ``usb.core.find``), its ``main()`` runs, and the
board is saved back. Two things keep this from being a plain in-process call, both pydfuutil's:
``main()`` consumes its option table and cannot run twice in a process; and its device probe files
every alt setting once per alt setting (16 entries for an STM32F4's 4), after which it refuses the
device as "more than one DFU capable USB device" (its open issue #15 on real STM32s). The shim
below drops those repeats after its probe and changes nothing else.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Any

import pydfuutil.__main__ as cli
from pydfuutil.dfu_util import DfuUtil

from agent.sim.stm32_dfu import SimDfuDevice, SimUsbBus


def _without_repeats(probe: Any) -> Any:
    def probe_devices(ctx: Any) -> None:
        probe(ctx)
        seen, entry, previous = set(), DfuUtil.dfu_root, None
        while entry is not None:
            key = (entry.bus, entry.devnum, entry.interface, entry.altsetting)
            if key in seen and previous is not None:
                previous.next = entry.next
            else:
                seen.add(key)
                previous = entry
            entry = entry.next

    return probe_devices


def main() -> None:
    state = Path(sys.argv[1])
    board = pickle.loads(state.read_bytes())
    bus = SimUsbBus()
    bus.attach(SimDfuDevice(port_numbers=(1, 4), board=board))
    cli.DEFAULT_BACKEND = bus
    cli.probe_devices = _without_repeats(cli.probe_devices)
    sys.argv = ["pydfuutil", *sys.argv[2:]]
    try:
        cli.main()
    finally:
        state.write_bytes(pickle.dumps(board))


if __name__ == "__main__":
    main()
