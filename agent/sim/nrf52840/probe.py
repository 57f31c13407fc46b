"""The simulated debug probe pyOCD drives: ``sim:<uid>``, one per probe folder of the board dir.

Opening the probe takes the probe's lock file (one session at a time, across processes) and maps
the current board's flash and UICR. The part itself lives as long as its slot stays powered
(:mod:`agent.sim.nrf52840.power`): a session in the same power-on continues where the last one
left it (APPROTECT latch, core state); after a power cycle the part starts from its reset, which
is when UICR.APPROTECT takes effect. Every DP/AP call is one SWD transfer for the fault injector
("disconnect after N transfers") and the timing model. ``close()`` may be called from another
thread while a transfer runs (that is how a session is aborted): it cuts the link first, then
frees the board once the running transfer is over; a probe with the ``close_ignored`` fault leaves
the session running instead.
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pyocd.core import exceptions
from pyocd.probe.debug_probe import DebugProbe

from agent.sim.nrf52840 import boards, settings
from agent.sim.nrf52840.chip import Chip
from agent.sim.nrf52840.core import CoreDebug
from agent.sim.nrf52840.dap import AP_DRW, AhbAp, ApFaultError, DebugPort
from agent.sim.nrf52840.power import (
    PowerView,
    Retained,
    add_flash_reads,
    load_retained,
    save_retained,
)
from agent.sim.nrf52840.timing import TimingModel

T = TypeVar("T")


class _OpenBoard:
    """Everything that exists while the probe is open."""

    def __init__(self, root: Path, uid: str) -> None:
        self.folder = folder = boards.current_board_dir(root, uid)
        spec = boards.read_spec(folder)
        self.files = [open(folder / name, "r+b") for name in ("flash.bin", "uicr.bin")]  # noqa: SIM115
        self.maps = [mmap.mmap(f.fileno(), 0) for f in self.files]
        enabled = settings.timing_enabled() if spec.timing is None else spec.timing
        self.timing = TimingModel(enabled=enabled, slow_part=spec.slow)
        self.chip = Chip(flash=self.maps[0], uicr=self.maps[1], spec=spec, timing=self.timing)
        self.core = CoreDebug(self.chip, self.timing)
        self.dp = DebugPort(self.chip, self.core, self.timing)
        self.transfers_left = boards.consume_disconnect(root, uid)
        self.close_ignored = boards.read_probe_state(root, uid).close_ignored
        self.power = PowerView(root, uid)
        _, self.power_on = self.power.state()
        retained = load_retained(folder)
        if retained is not None and retained.power_on == self.power_on:
            self.core.resume_mode(retained.core)
            self.chip.debug_locked = retained.debug_locked
        else:  # powered up since the last session (or never opened): the part starts from reset
            self.core.system_reset()

    def powered(self) -> bool:
        """True while the slot is powered and has not been power-cycled under this session."""
        on, power_on = self.power.state()
        return on and power_on == self.power_on

    def close(self) -> None:
        add_flash_reads(self.folder, self.chip.flash_bytes_read)
        save_retained(self.folder, Retained(power_on=self.power_on,
                                            debug_locked=self.chip.debug_locked,
                                            core=self.core.mode))
        self.power.close()
        self.chip.close()
        for mapping in self.maps:
            mapping.flush()
            mapping.close()
        for file in self.files:
            file.close()


class SimProbe(DebugProbe):  # type: ignore[misc]
    """A probe with a virtual nRF52840 behind it."""

    @classmethod
    def get_all_connected_probes(
        cls, unique_id: str | None = None, is_explicit: bool = False
    ) -> list[SimProbe]:
        """Every probe folder in the board directory (none when it is not configured)."""
        root = settings.board_dir()
        return [] if root is None else [cls(root, uid) for uid in boards.list_probe_uids(root)]

    @classmethod
    def get_probe_with_id(cls, unique_id: str, is_explicit: bool = False) -> SimProbe | None:
        """The probe whose id is exactly ``unique_id``, else None (never waits)."""
        root = settings.board_dir()
        if root is None or unique_id not in boards.list_probe_uids(root):
            return None
        return cls(root, unique_id)

    def __init__(self, root: Path, uid: str) -> None:
        super().__init__()
        self._root, self._uid = root, uid
        self._probe_lock = boards.ProbeLock(root, uid)
        self._io = threading.Lock()
        self._board: _OpenBoard | None = None
        self._cut = False
        self._batch_open = False  # transfers issued since the probe last answered
        self._protocol: DebugProbe.Protocol | None = None

    vendor_name = property(lambda self: "fixture-agent")
    product_name = property(lambda self: "simulated SWD probe (nRF52840)")
    unique_id = property(lambda self: self._uid)
    supported_wire_protocols = property(
        lambda self: [DebugProbe.Protocol.DEFAULT, DebugProbe.Protocol.SWD]
    )
    wire_protocol = property(lambda self: self._protocol)
    is_open = property(lambda self: self._board is not None)
    capabilities = property(lambda self: set())

    def open(self) -> None:
        """Take the probe and power up the board under it."""
        try:
            self._probe_lock.acquire()
        except boards.ProbeBusyError as error:
            raise exceptions.ProbeError(str(error)) from None
        try:
            self._board, self._cut = _OpenBoard(self._root, self._uid), False
        except Exception:
            self._probe_lock.release()
            raise

    def close(self) -> None:
        """Cut the link now, then release the board (safe from another thread, safe twice)."""
        board = self._board
        if board is not None and board.close_ignored:
            board.close_ignored = False  # the injected fault: this close leaves the session be
            return
        self._cut = True
        with self._io:
            board, self._board = self._board, None
            if board is not None:
                board.close()
            self._probe_lock.release()

    def connect(self, protocol: DebugProbe.Protocol | None = None) -> None:
        """Select SWD (the only wire protocol)."""
        self._protocol = DebugProbe.Protocol.SWD

    def disconnect(self) -> None:
        """Deselect the wire protocol."""
        self._protocol = None

    def set_clock(self, frequency: float) -> None:
        """Set the SWD clock (used by the timing model)."""
        if self._board is not None:
            self._board.timing.swd_hz = float(frequency)

    def reset(self) -> None:
        """Pulse nRESET."""
        self._transfer(lambda b: b.core.system_reset())

    def assert_reset(self, asserted: bool) -> None:
        """Drive nRESET; the reset happens on release."""
        if not asserted:
            self.reset()

    def is_reset_asserted(self) -> bool:
        """nRESET is only ever pulsed."""
        return False

    def flush(self) -> None:
        """Send what is queued: one USB round trip when anything was."""
        self._round_trip()

    def _round_trip(self) -> None:
        """The host waits for the probe's answer to the transfers issued since the last one."""
        board = self._board
        if board is not None and self._batch_open:
            self._batch_open = False
            board.timing.round_trip()

    # --- DP/AP transfers -----------------------------------------------------------------------

    def _transfer(self, action: Callable[[_OpenBoard], T], words: int = 1) -> T:
        with self._io:
            board = self._board
            if board is None or self._cut:
                raise exceptions.ProbeDisconnected("simulated probe link is down")
            if not board.powered():
                self._cut = True  # the chip lost power: this session is over
                raise exceptions.ProbeDisconnected("no answer from the target: DUT power is off")
            if board.transfers_left is not None:
                board.transfers_left -= 1
                if board.transfers_left < 0:
                    self._cut = True
                    raise exceptions.ProbeDisconnected("simulated probe disconnected (injected)")
            board.timing.swd_accesses(words)
            self._batch_open = True
            try:
                return action(board)
            except ApFaultError as error:
                board.dp.fault()
                raise exceptions.TransferFaultError(str(error)) from None

    def _deferred(self, read: Callable[[], T], now: bool) -> T | Callable[[], T]:
        """pyOCD reads with now=False want a callable; faults are raised from it.

        A read answered now ends the batch with a round trip; deferred reads are answered
        together, with one round trip when the first of them is taken.
        """
        if now:
            value = read()
            self._round_trip()
            return value
        try:
            value = read()
        except exceptions.TransferError as error:
            failure = error

            def raise_later() -> T:
                self._round_trip()
                raise failure

            return raise_later

        def answer() -> T:
            self._round_trip()
            return value

        return answer

    def read_dp(self, addr: int, now: bool = True) -> Any:
        """Read a DP register."""
        return self._deferred(lambda: self._transfer(lambda b: b.dp.read_dp(addr & 0xC)), now)

    def write_dp(self, addr: int, data: int) -> None:
        """Write a DP register."""
        self._transfer(lambda b: b.dp.write_dp(addr & 0xC, data))

    def read_ap(self, addr: int, now: bool = True) -> Any:
        """Read a register of the AP that DP SELECT points at."""

        def read(board: _OpenBoard) -> int:
            ap, register = board.dp.selected_ap(addr)
            return 0 if ap is None else ap.read(register)

        return self._deferred(lambda: self._transfer(read), now)

    def write_ap(self, addr: int, data: int) -> None:
        """Write a register of the selected AP."""

        def write(board: _OpenBoard) -> None:
            ap, register = board.dp.selected_ap(addr)
            if ap is not None:
                ap.write(
                    register, data & 0xFFFFFFFF
                )  # the wire carries 32 bits, whatever pyOCD had

        self._transfer(write)

    def read_ap_multiple(self, addr: int, count: int = 1, now: bool = True) -> Any:
        """Repeated reads of one AP register (DRW block reads are batched)."""

        def read(board: _OpenBoard) -> Sequence[int]:
            ap, register = board.dp.selected_ap(addr)
            if isinstance(ap, AhbAp) and register == AP_DRW:
                return ap.read_words(count)
            return [0 if ap is None else ap.read(register) for _ in range(count)]

        return self._deferred(lambda: self._transfer(read, words=count), now)

    def write_ap_multiple(self, addr: int, values: Sequence[int]) -> None:
        """Repeated writes of one AP register (DRW block writes are batched)."""

        def write(board: _OpenBoard) -> None:
            ap, register = board.dp.selected_ap(addr)
            if isinstance(ap, AhbAp) and register == AP_DRW:
                ap.write_words(list(values))
            elif ap is not None:
                for value in values:
                    ap.write(register, value & 0xFFFFFFFF)

        self._transfer(write, words=len(values))
