"""Simulated nRF52840 boards as files, so that every process sees the same boards.

Layout of a board directory::

    DIR/<probe uid>/probe.json        which board sits under this probe, probe faults
    DIR/<probe uid>/probe.lock        flock held while a debug session has the probe open
    DIR/<probe uid>/meta.lock         flock held for read-modify-write of the JSON files
    DIR/<probe uid>/board-<id>/       one board: board.json, flash.bin (1 MiB), uicr.bin (4 KiB)

Flash and UICR are plain files that a session maps with ``mmap`` (shared), so what one process
programs the next one reads, and a reader in another process never sees a torn JSON file: JSON is
always written to a temporary file and moved into place with ``os.replace``. Placing a new board
creates a new ``board-<id>`` folder and then switches ``probe.json`` to it, so a session that is
still open keeps the board it opened (like a board that is physically still in the slot).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.firmware import device_key

FLASH_SIZE = 1024 * 1024
PAGE_SIZE = 4096
# Where a new (unlocked) board carries the public key its own firmware made (a P-256 key record,
# agent.firmware.device_key): what a part that keeps its key would leave for the line to certify.
DEVICE_KEY_ADDRESS = 0x000F_D000
UICR_BASE = 0x10001000
UICR_SIZE = 4096
FICR_BASE = 0x10000000
FICR_SIZE = 4096
APPROTECT_OFFSET = 0x208  # UICR.APPROTECT
ERASED_WORD = 0xFFFFFFFF

_UID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class BoardError(Exception):
    """A board directory or probe id is unusable."""


class ProbeBusyError(BoardError):
    """Another session (maybe another process) has this probe open."""


@dataclass(frozen=True)
class BoardSpec:
    """What a board is and which faults it carries (``board.json``)."""

    device_id: int
    stuck_words: tuple[int, ...] = ()  # flash/UICR word addresses that ignore writes
    slow: bool = False  # page erase at the 85 ms maximum instead of the ~21 ms typical
    timing: bool | None = None  # per-board timing model; None: the process-wide setting
    # A core whose lockup only a reset ends (a halt request is ignored meanwhile): stricter than
    # ARMv7-M requires, as some parts and other simulators behave.
    lockup_needs_reset: bool = False
    # UICR.APPROTECT reads back as written but the part stays open after reset (a part that does
    # not lock the way the firmware set assumes).
    lock_ignored: bool = False


@dataclass
class ProbeState:
    """Which board sits under a probe, and the probe's one-shot faults (``probe.json``)."""

    board: str | None = None
    disconnect_after: int | None = None  # transfers before the link drops (fires once)
    close_ignored: bool = False  # close() from another thread does not stop a running transfer
    extra: dict[str, Any] = field(default_factory=dict)


def probe_path(root: Path, probe_uid: str) -> Path:
    """Folder of one probe; rejects ids that could escape the board directory."""
    if not _UID_PATTERN.match(probe_uid):
        raise BoardError(f"bad probe uid {probe_uid!r}")
    return root / probe_uid


def list_probe_uids(root: Path) -> list[str]:
    """Probe ids that have a board directory entry, sorted."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "probe.json").is_file())


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


@contextlib.contextmanager
def _flocked(path: Path, flags: int = fcntl.LOCK_EX) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, flags)
        yield fd
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def read_probe_state(root: Path, probe_uid: str) -> ProbeState:
    """The probe's ``probe.json``; a missing probe raises BoardError."""
    path = probe_path(root, probe_uid) / "probe.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise BoardError(f"no simulated probe {probe_uid!r} in {root}") from None
    return ProbeState(board=raw.get("board"), disconnect_after=raw.get("disconnect_after"),
                      close_ignored=bool(raw.get("close_ignored", False)))


def _write_probe_state(root: Path, probe_uid: str, state: ProbeState) -> None:
    data = {"board": state.board, "disconnect_after": state.disconnect_after,
            "close_ignored": state.close_ignored}
    _write_json(probe_path(root, probe_uid) / "probe.json", data)


def current_board_dir(root: Path, probe_uid: str) -> Path:
    """Folder of the board under the probe; BoardError when the slot is empty."""
    state = read_probe_state(root, probe_uid)
    if state.board is None:
        raise BoardError(f"probe {probe_uid!r} has no board")
    return probe_path(root, probe_uid) / state.board


def read_spec(board: Path) -> BoardSpec:
    """A board's ``board.json``."""
    raw = json.loads((board / "board.json").read_text())
    return BoardSpec(
        device_id=int(raw["device_id"]),
        stuck_words=tuple(int(a) for a in raw.get("stuck_words", ())),
        slow=bool(raw.get("slow", False)),
        timing=raw.get("timing"),
        lockup_needs_reset=bool(raw.get("lockup_needs_reset", False)),
        lock_ignored=bool(raw.get("lock_ignored", False)),
    )


def _new_board_files(folder: Path, spec: BoardSpec, *, locked: bool) -> None:
    folder.mkdir(parents=True)
    flash = bytearray(b"\xff" * FLASH_SIZE)
    uicr = bytearray(b"\xff" * UICR_SIZE)
    if locked:
        # A locked part carries some firmware: tests must be able to tell it was not erased.
        flash[: 4 * PAGE_SIZE] = bytes(i & 0xFF for i in range(4 * PAGE_SIZE))
        uicr[APPROTECT_OFFSET : APPROTECT_OFFSET + 4] = b"\x00\x00\x00\x00"
    else:
        record = device_key.key_record(ec.generate_private_key(ec.SECP256R1()).public_key()
                                       .public_bytes(Encoding.X962,
                                                     PublicFormat.UncompressedPoint))
        flash[DEVICE_KEY_ADDRESS : DEVICE_KEY_ADDRESS + len(record)] = record
    (folder / "flash.bin").write_bytes(flash)
    (folder / "uicr.bin").write_bytes(uicr)
    _write_json(folder / "board.json", asdict(spec) | {"stuck_words": list(spec.stuck_words)})


def place_new_board(
    board_dir: Path, probe_uid: str, *, device_id: int | None = None, locked: bool = False
) -> int:
    """Put a fresh board (erased flash and UICR) under ``probe_uid``, creating the probe.

    ``device_id`` is the FICR DEVICEID (random 64-bit when omitted); ``locked`` leaves the part
    with UICR.APPROTECT enabled and some firmware in flash. Returns the DEVICEID. Faults of the
    previous board go away with it; a pending probe disconnect stays (it belongs to the probe).
    """
    device_id = secrets.randbits(64) if device_id is None else device_id
    if not 0 <= device_id < 1 << 64:
        raise BoardError(f"device id {device_id:#x} is not 64-bit")
    probe = probe_path(board_dir, probe_uid)
    probe.mkdir(parents=True, exist_ok=True)
    name = f"board-{device_id:016x}-{secrets.token_hex(3)}"
    staging = probe / f".{name}.tmp"
    _new_board_files(staging, BoardSpec(device_id=device_id), locked=locked)
    staging.rename(probe / name)
    with _flocked(probe / "meta.lock"):
        try:
            state = read_probe_state(board_dir, probe_uid)
        except BoardError:
            state = ProbeState()
        old = state.board
        state.board = name
        _write_probe_state(board_dir, probe_uid, state)
    if old is not None and old != name:
        # Gone from the fixture; an open session keeps its mapping (unlinked files live on).
        shutil.rmtree(probe / old, ignore_errors=True)
    return device_id


def update_board(board_dir: Path, probe_uid: str, **changes: Any) -> BoardSpec:
    """Change fields of the current board's spec (fault injection); returns the new spec."""
    probe = probe_path(board_dir, probe_uid)
    with _flocked(probe / "meta.lock"):
        board = current_board_dir(board_dir, probe_uid)
        spec = replace(read_spec(board), **changes)
        _write_json(board / "board.json", asdict(spec) | {"stuck_words": list(spec.stuck_words)})
    return spec


def inject_stuck_word(board_dir: Path, probe_uid: str, address: int) -> None:
    """Make the flash (or UICR) word at ``address`` ignore every write (a weak cell)."""
    spec = read_spec(current_board_dir(board_dir, probe_uid))
    update_board(board_dir, probe_uid, stuck_words=(*spec.stuck_words, address & ~3))


def set_slow_part(board_dir: Path, probe_uid: str, slow: bool = True) -> None:
    """Make the current board erase pages at the 85 ms maximum (visible with timing on)."""
    update_board(board_dir, probe_uid, slow=slow)


def set_board_timing(board_dir: Path, probe_uid: str, enabled: bool | None) -> None:
    """Switch the timing model for the current board only (``None``: process-wide setting)."""
    update_board(board_dir, probe_uid, timing=enabled)


def inject_disconnect(board_dir: Path, probe_uid: str, after_transfers: int | None) -> None:
    """Drop the probe link after ``after_transfers`` DP/AP transfers of its next session.

    Fires once (the next session after that works again); ``None`` cancels.
    """
    probe = probe_path(board_dir, probe_uid)
    with _flocked(probe / "meta.lock"):
        state = read_probe_state(board_dir, probe_uid)
        state.disconnect_after = after_transfers
        _write_probe_state(board_dir, probe_uid, state)


def set_close_ignored(board_dir: Path, probe_uid: str, ignored: bool = True) -> None:
    """Make the probe's close() leave a transfer in flight running (a probe that cannot be cut)."""
    probe = probe_path(board_dir, probe_uid)
    with _flocked(probe / "meta.lock"):
        state = read_probe_state(board_dir, probe_uid)
        state.close_ignored = ignored
        _write_probe_state(board_dir, probe_uid, state)


def consume_disconnect(board_dir: Path, probe_uid: str) -> int | None:
    """Take the pending disconnect fault for a session that is starting (clears it)."""
    probe = probe_path(board_dir, probe_uid)
    with _flocked(probe / "meta.lock"):
        state = read_probe_state(board_dir, probe_uid)
        after = state.disconnect_after
        if after is not None:
            state.disconnect_after = None
            _write_probe_state(board_dir, probe_uid, state)
    return after


def ficr_image(device_id: int) -> bytes:
    """FICR contents: page geometry, part info (nRF52840 QIAAD0) and the DEVICEID."""
    ficr = bytearray(b"\xff" * FICR_SIZE)
    words = {
        0x010: PAGE_SIZE,  # CODEPAGESIZE
        0x014: FLASH_SIZE // PAGE_SIZE,  # CODESIZE
        0x060: device_id & 0xFFFFFFFF,  # DEVICEID[0]
        0x064: device_id >> 32,  # DEVICEID[1]
        0x100: 0x52840,  # INFO.PART
        # Build code D0: silicon before hardened APPROTECT, so UICR.APPROTECT alone decides.
        0x104: int.from_bytes(b"AAD0", "big"),  # INFO.VARIANT
        0x108: 0x2004,  # INFO.PACKAGE (QI)
        0x10C: 256,  # INFO.RAM (KiB)
        0x110: 1024,  # INFO.FLASH (KiB)
    }
    for offset, value in words.items():
        ficr[offset : offset + 4] = value.to_bytes(4, "little")
    return bytes(ficr)


def read_board_memory(board_dir: Path, probe_uid: str, address: int, size: int) -> bytes:
    """Read flash, UICR or FICR of the board under ``probe_uid`` straight from its files."""
    board = current_board_dir(board_dir, probe_uid)
    areas: tuple[tuple[int, int, Callable[[], bytes]], ...] = (
        (0, FLASH_SIZE, (board / "flash.bin").read_bytes),
        (UICR_BASE, UICR_SIZE, (board / "uicr.bin").read_bytes),
        (FICR_BASE, FICR_SIZE, lambda: ficr_image(read_spec(board).device_id)),
    )
    for base, length, load in areas:
        if base <= address and address + size <= base + length:
            return load()[address - base : address - base + size]
    raise BoardError(f"0x{address:08X}+{size} is not flash, UICR or FICR")


class ProbeLock:
    """The probe held by one debug session: ProbeBusyError at once if another session holds it.

    A real USB probe can be opened by one process at a time; ``flock`` gives the same rule across
    processes (and between two sessions of one process, since each opens its own descriptor).
    """

    def __init__(self, board_dir: Path, probe_uid: str) -> None:
        self._path = probe_path(board_dir, probe_uid) / "probe.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the probe; raises ProbeBusyError without waiting."""
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ProbeBusyError(f"simulated probe {self._path.parent.name!r} is in use") from None
        self._fd = fd

    def release(self) -> None:
        """Give the probe back; safe to call twice."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
