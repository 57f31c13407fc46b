"""A virtual nRF52840 behind a pyOCD probe plugin (``sim:<uid>``), with its boards as files.

The board API for tests and the simulated operator lives in :mod:`agent.sim.nrf52840.boards`;
the board directory and the timing switch in :mod:`agent.sim.nrf52840.settings`. Nothing here
imports pyOCD (see ``plugin.py`` for why).
"""

from agent.sim.nrf52840.boards import (
    inject_disconnect,
    inject_stuck_word,
    place_new_board,
    read_board_memory,
    set_board_timing,
    set_slow_part,
)
from agent.sim.nrf52840.settings import board_dir, set_board_dir, set_timing, timing_enabled

__all__ = [
    "board_dir",
    "inject_disconnect",
    "inject_stuck_word",
    "place_new_board",
    "read_board_memory",
    "set_board_dir",
    "set_board_timing",
    "set_slow_part",
    "set_timing",
    "timing_enabled",
]
