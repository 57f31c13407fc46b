"""Faults the simulated bootloader can be told to commit, one shot at a time.

Tests set a field and the next matching event consumes it, so each fault is explicit and bounded:
a NACK for a command frame, a byte lost on the wire in either direction, a Write Memory that is
acknowledged but not stored, or a reset in the middle of a command.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Faults:
    """Pending faults; every counter counts down to zero as faults are committed."""

    nack_commands: dict[int, int] = field(default_factory=dict)
    """Command code -> how many of its next command frames to NACK (as for line noise)."""
    nack_write_data: int = 0
    """NACK this many of the next Write Memory data frames (as for a checksum error)."""
    drop_rx_at: int | None = None
    """Lose the received byte at this index, counting from 0 at the next byte received."""
    drop_tx_at: int | None = None
    """Lose the sent byte at this index, counting from 0 at the next byte sent."""
    lost_writes: int = 0
    """ACK this many of the next flash writes without storing them (a write that does not take)."""
    reset_in_command: int | None = None
    """Reset the part just after ACKing the next command frame with this code."""

    def take_nack(self, command: int) -> bool:
        """True (and consumed) when this command frame is to be NACKed."""
        return _take(self.nack_commands, command)

    def take_reset(self, command: int) -> bool:
        """True (and consumed) when the part is to reset inside this command."""
        if self.reset_in_command == command:
            self.reset_in_command = None
            return True
        return False

    def take_write_nack(self) -> bool:
        """True (and consumed) when this Write Memory data frame is to be NACKed."""
        if self.nack_write_data > 0:
            self.nack_write_data -= 1
            return True
        return False

    def take_lost_write(self) -> bool:
        """True (and consumed) when this flash write is to be acknowledged but not stored."""
        if self.lost_writes > 0:
            self.lost_writes -= 1
            return True
        return False

    def filter_rx(self, data: bytes) -> bytes:
        """Received bytes with a pending lost byte taken out."""
        data, self.drop_rx_at = _drop(data, self.drop_rx_at)
        return data

    def filter_tx(self, data: bytes) -> bytes:
        """Sent bytes with a pending lost byte taken out."""
        data, self.drop_tx_at = _drop(data, self.drop_tx_at)
        return data


def _take(pending: dict[int, int], key: int) -> bool:
    left = pending.get(key, 0)
    if left <= 0:
        return False
    pending[key] = left - 1
    return True


def _drop(data: bytes, at: int | None) -> tuple[bytes, int | None]:
    """Remove the byte at index ``at`` if it falls in ``data``; return the remaining countdown."""
    if at is None:
        return data, None
    if at < len(data):
        return data[:at] + data[at + 1 :], None
    return data, at - len(data)
