"""DUT power of a simulated slot, and what the part keeps while it stays powered.

On a fixture the DUT power relay decides when a part starts afresh: a power-on resets it and
samples UICR.APPROTECT; a debug session opening and closing changes nothing. The simulated part
follows that across processes (a slot's worker process, the ``pyocd`` command line):

* ``DIR/<probe>/power``: one little-endian u64, ``2 * power_ons + powered``, written in place by
  whatever plays the relay (the simulated fixture's DUT power pin) with one aligned 8-byte store,
  read by the probe on every transfer. No file: a board on the bench, always on, never cycled.
* ``DIR/<probe>/board-*/stats.json``: what sessions did to the board (bytes read from flash),
  for tests and benchmarks that count work rather than time it.
* ``DIR/<probe>/board-*/retained.json``: the state a session leaves behind (APPROTECT latch, core
  halted / running / locked up), tagged with the power-on it belongs to. A session that opens in
  the same power-on continues from it; after a power cycle the part starts from its reset.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from agent.sim.nrf52840.boards import _flocked, _write_json, probe_path

_WORD = struct.Struct("<Q")
CoreMode = Literal["running", "lockup", "halted"]


def switch_power(root: Path, probe_uid: str, on: bool) -> None:
    """The fixture's relay: power the slot's part on or off (a power-on counts as a new start)."""
    probe = probe_path(root, probe_uid)
    probe.mkdir(parents=True, exist_ok=True)  # the slot exists before its first board
    path = probe / "power"
    with _flocked(probe / "meta.lock"):
        try:
            word = _WORD.unpack(path.read_bytes())[0]
        except (FileNotFoundError, struct.error):
            word = 0
        powered, power_ons = bool(word & 1), word >> 1
        if on and not powered:
            power_ons += 1
        data = _WORD.pack(2 * power_ons + int(on))
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)


class PowerView:
    """A probe's view of its slot's power: (powered, power-on count), cheap enough per transfer."""

    def __init__(self, root: Path, probe_uid: str) -> None:
        path = probe_path(root, probe_uid) / "power"
        self._map: mmap.mmap | None = None
        if path.exists():
            with path.open("rb") as file:
                self._map = mmap.mmap(file.fileno(), _WORD.size, access=mmap.ACCESS_READ)

    def state(self) -> tuple[bool, int]:
        """Whether the part is powered now, and which power-on it is in."""
        if self._map is None:
            return True, 0
        word = _WORD.unpack_from(self._map, 0)[0]
        return bool(word & 1), word >> 1

    def close(self) -> None:
        """Drop the mapping."""
        if self._map is not None:
            self._map.close()
            self._map = None


@dataclass(frozen=True)
class Retained:
    """What the part holds between debug sessions within one power-on."""

    power_on: int
    debug_locked: bool
    core: CoreMode


def load_retained(board: Path) -> Retained | None:
    """The state the last session left on this board, if any."""
    try:
        raw = json.loads((board / "retained.json").read_text())
        return Retained(power_on=int(raw["power_on"]), debug_locked=bool(raw["debug_locked"]),
                        core=raw["core"])
    except (FileNotFoundError, KeyError, ValueError):
        return None


def save_retained(board: Path, retained: Retained) -> None:
    """Leave the part's state for the next session (atomically, as every board file)."""
    _write_json(board / "retained.json", asdict(retained))


def add_flash_reads(board: Path, count: int) -> None:
    """Count bytes the debugger read from this board's flash and UICR (``stats.json``)."""
    if count:
        _write_json(board / "stats.json", {"flash_bytes_read": flash_bytes_read(board) + count})


def flash_bytes_read(board: Path) -> int:
    """Bytes the debugger has read from this board's flash and UICR over all sessions."""
    try:
        return int(json.loads((board / "stats.json").read_text())["flash_bytes_read"])
    except (FileNotFoundError, KeyError, ValueError):
        return 0
