"""Where simulated nRF52840 boards live and whether they keep real-chip time.

Both come from the environment (so that a second process, e.g. the ``pyocd`` command line, sees the
same boards) and can be overridden in-process from the station configuration's ``simulation``
section. This module must stay free of pyOCD imports: pyOCD's entry-point loader imports this
package while ``import pyocd`` is still running.
"""

from __future__ import annotations

import os
from pathlib import Path

BOARD_DIR_ENV = "FIXTURE_AGENT_SIM_DIR"
TIMING_ENV = "FIXTURE_AGENT_SIM_TIMING"

_board_dir: Path | None = None
_timing: bool | None = None


def set_board_dir(path: Path | str | None) -> None:
    """Use ``path`` as the board directory in this process (``None``: back to the environment).

    The environment variable is set too, so child processes (``pyocd`` command line) agree.
    """
    global _board_dir
    _board_dir = None if path is None else Path(path)
    if _board_dir is not None:
        os.environ[BOARD_DIR_ENV] = str(_board_dir)


def board_dir() -> Path | None:
    """The board directory in effect, or ``None`` when simulation is not configured."""
    if _board_dir is not None:
        return _board_dir
    value = os.environ.get(BOARD_DIR_ENV)
    return Path(value) if value else None


def set_timing(enabled: bool | None) -> None:
    """Switch the real-chip timing model on or off for every board (``None``: environment).

    The environment variable is set too, so child processes (slot workers) agree.
    """
    global _timing
    _timing = enabled
    if enabled is not None:
        os.environ[TIMING_ENV] = "1" if enabled else "0"


def timing_enabled() -> bool:
    """Whether boards without their own setting keep real-chip time (off unless asked)."""
    if _timing is not None:
        return _timing
    return os.environ.get(TIMING_ENV, "0").strip().lower() in {"1", "true", "yes", "on"}
