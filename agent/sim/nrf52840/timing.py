"""The switchable real-chip timing model of the virtual nRF52840.

Figures from the nRF52840 Product Specification: a flash word write takes 41 us, a page erase
about 21 ms typically and 85 ms at most, ERASEALL about 170 ms. Every 32-bit SWD access costs 46
clocks at the probe's clock. With the model off (tests) everything is as fast as Python allows.

The link and the flash are modelled as two clocks that run in parallel, the way pyOCD overlaps
loading the next page buffer with the algorithm programming the previous one: SWD transfers sleep
when the link falls behind, and the CPU stays "running" until the flash work it started is done.

The probe is a USB device: every batch of transfers whose answer the host waits for costs a USB
round trip (``PROBE_ROUND_TRIP_S``, a high-speed probe: J-Link, ST-LINK/V3, CMSIS-DAP v2; a
full-speed HID probe takes about 1 ms). Without it a host polling a busy part (pyOCD waiting for
its flash algorithm) would spin at Python speed, burning a core a real station spends sleeping.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

WORD_WRITE_S = 41e-6
PAGE_ERASE_TYPICAL_S = 0.021
PAGE_ERASE_MAX_S = 0.085
ERASE_ALL_S = 0.170
SWD_CLOCKS_PER_ACCESS = 46
PROBE_ROUND_TRIP_S = 250e-6
_SLEEP_SLICE_S = 0.002  # sleeping costs ~60 us of overhead: only sleep once the debt is worth it


@dataclass
class TimingModel:
    """Keeps simulated time for one open board; a disabled model costs nothing."""

    enabled: bool = False
    slow_part: bool = False
    swd_hz: float = 4_000_000.0
    _link_free_at: float = field(default=0.0, repr=False)

    @property
    def page_erase_s(self) -> float:
        """Seconds per page erase (the maximum for a slow part)."""
        return PAGE_ERASE_MAX_S if self.slow_part else PAGE_ERASE_TYPICAL_S

    def swd_accesses(self, count: int) -> None:
        """Account for ``count`` 32-bit SWD accesses, sleeping when the link falls behind."""
        if self.enabled:
            self._charge(count * SWD_CLOCKS_PER_ACCESS / self.swd_hz)

    def round_trip(self) -> None:
        """Account for one USB round trip to the probe (the host waits for its answer)."""
        if self.enabled:
            self._charge(PROBE_ROUND_TRIP_S)

    def _charge(self, cost: float) -> None:
        now = time.monotonic()
        self._link_free_at = max(self._link_free_at, now) + cost
        behind = self._link_free_at - now
        if behind >= _SLEEP_SLICE_S:
            time.sleep(behind)

    def busy_until(self, seconds: float) -> float:
        """Monotonic deadline for flash work of ``seconds`` started now (now when disabled)."""
        now = time.monotonic()
        return now + seconds if self.enabled else now
