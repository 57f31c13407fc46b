"""The switchable timing model of the simulated DFU device: the USB bus and the STM32F4 flash.

USB full speed moves control transfers in 64-byte packets, and at most 13 such transactions fit in
a 1 ms frame (USB 2.0 table 5-8, 832 bytes a frame); a control transfer is its SETUP stage, its
data packets and its status stage. Flash times are RM0090's typical figures at x32 parallelism
(3.3 V): 16 us a word, 250 ms / 550 ms / 1 s to erase a 16 / 64 / 128 KiB sector, 8 s for all.

The device reports each operation's time as ``bwPollTimeout`` (whole milliseconds) and stays busy
that long: a request arriving earlier is NAKed until then, as ST's ROM does while it programs. The
bus is a clock of its own: transfers add to it and the caller sleeps only once it falls behind, so
Python's own time between transfers is not charged twice. When the simulator itself wakes late
from such a sleep, the next transfer is taken to arrive that much earlier: the host is charged for
its own time, never for the simulator's. With the model off (tests) nothing waits and every poll
timeout is 0.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

FRAME_S = 0.001
PACKET_SIZE = 64  # bMaxPacketSize0 of a full-speed device
TRANSACTIONS_PER_FRAME = 13
WORD_PROGRAM_S = 16e-6
SECTOR_ERASE_S = {16 * 1024: 0.25, 64 * 1024: 0.55, 128 * 1024: 1.0}
MASS_ERASE_S = 8.0
OPTION_BYTES_S = 0.25  # not published; taken as long as a 16 KiB sector erase
REENUMERATE_S = 0.1  # a part that reset: ROM start, USB attach, the host's enumeration
_SLEEP_SLICE_S = 0.002  # sleeping costs ~60 us: only sleep once the debt is worth it


def transfer_s(length: int) -> float:
    """Bus time of one control transfer carrying ``length`` data bytes."""
    transactions = 2 + math.ceil(length / PACKET_SIZE)
    return transactions * FRAME_S / TRANSACTIONS_PER_FRAME


def program_s(length: int) -> float:
    """Flash programming time of ``length`` bytes (whole words)."""
    return math.ceil(length / 4) * WORD_PROGRAM_S


def erase_s(sector_size: int) -> float:
    """Erase time of one sector."""
    return SECTOR_ERASE_S[sector_size]


def poll_ms(seconds: float) -> int:
    """An operation's time as the whole milliseconds of ``bwPollTimeout``."""
    return math.ceil(seconds * 1000 - 1e-9)


@dataclass
class DfuTiming:
    """Keeps bus and flash time for one simulated device; a disabled model costs nothing."""

    enabled: bool = False
    early_polls: int = 0  # requests that arrived while the device was still busy
    _bus_free_at: float = field(default=0.0, repr=False)
    _ready_at: float = field(default=0.0, repr=False)
    _overslept: float = field(default=0.0, repr=False)

    def poll_timeout_ms(self, seconds: float) -> int:
        """What the device reports for an operation of ``seconds`` (0 with the model off)."""
        return poll_ms(seconds) if self.enabled else 0

    def transfer(self, length: int, *, settle: bool = False) -> None:
        """Account one control transfer; ``settle`` returns only once the bus clock is reached.

        A transfer cannot start before the device is ready (it is NAKed until then).
        """
        if not self.enabled:
            return
        now = time.monotonic()
        arrival, self._overslept = now - self._overslept, 0.0
        if arrival < self._ready_at:
            self.early_polls += 1
        start = max(arrival, self._bus_free_at, self._ready_at)
        self._bus_free_at = start + transfer_s(length)
        behind = self._bus_free_at - now
        if behind >= _SLEEP_SLICE_S or (settle and behind > 0):
            time.sleep(behind)
            self._overslept = max(0.0, time.monotonic() - self._bus_free_at)

    def busy_for(self, milliseconds: int) -> float:
        """The device works ``milliseconds`` after the transfer just accounted; its ready time."""
        if self.enabled:
            self._ready_at = self._bus_free_at + milliseconds / 1000
            return self._ready_at
        return time.monotonic()

    def reenumerate_s(self) -> float:
        """How long a reset part stays off the bus."""
        return REENUMERATE_S if self.enabled else 0.0
