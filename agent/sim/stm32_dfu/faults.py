"""Faults the simulated DFU device can be told to commit, each one shot and counted down.

Tests set a field; the next matching event consumes it: a stalled request, a device that leaves
the bus in the middle of a download, an operation that ends in an error status, a block that is
acknowledged but not stored (a write that does not take), a request that hangs (a wedged part
NAKs it for as long as the host keeps trying).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class DfuFaults:
    """Pending faults of one simulated device."""

    stall_requests: dict[int, int] = field(default_factory=dict)
    """DFU request code (1 DNLOAD, 2 UPLOAD, 3 GETSTATUS ...) -> how many of its next to STALL."""
    vanish_after_blocks: int | None = None
    """Leave the bus (as a cable pulled or a brown-out) after this many more data blocks."""
    status_errors: dict[str, int] = field(default_factory=dict)
    """Operation ("write", "erase", "set-address") -> DFU status its next occurrence ends with."""
    lost_writes: int = 0
    """Acknowledge this many of the next data blocks without storing them."""
    silent_resets: int = 0
    """Reset this many of the next times before answering the GETSTATUS that starts a reset."""
    hang: threading.Event | None = None
    """Hold the next request until this event is set; ``hanging`` is set while it is held."""
    hanging: threading.Event = field(default_factory=threading.Event)

    def hold_if_hung(self) -> None:
        """Block the calling transfer while a hang is pending (consumed)."""
        release, self.hang = self.hang, None
        if release is not None:
            self.hanging.set()
            release.wait()
            self.hanging.clear()

    def take_stall(self, request: int) -> bool:
        """True (and consumed) when this request is to be stalled."""
        left = self.stall_requests.get(request, 0)
        if left <= 0:
            return False
        self.stall_requests[request] = left - 1
        return True

    def take_vanish(self) -> bool:
        """Count one stored data block; True when it was the last before the device leaves."""
        if self.vanish_after_blocks is None:
            return False
        self.vanish_after_blocks -= 1
        if self.vanish_after_blocks > 0:
            return False
        self.vanish_after_blocks = None
        return True

    def take_status_error(self, operation: str) -> int | None:
        """The error status this operation is to end with, if one is pending (consumed)."""
        return self.status_errors.pop(operation, None)

    def take_silent_reset(self) -> bool:
        """True (and consumed) when the part is to reset without answering."""
        if self.silent_resets > 0:
            self.silent_resets -= 1
            return True
        return False

    def take_lost_write(self) -> bool:
        """True (and consumed) when this block is to be acknowledged but not stored."""
        if self.lost_writes > 0:
            self.lost_writes -= 1
            return True
        return False
