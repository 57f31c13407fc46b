"""What `fixture-agent run` prints: one line per unit, and what the station is waiting for.

A line operator or a newcomer at a terminal (or the journal under systemd) sees each unit's slot,
serial, outcome and duration, and every change in what holds the station back ("no job", "job
wo-1 waits for firmware set ...", "outbox holds ..."), instead of a silent process.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import TextIO

from agent.wire.messages import StationStatus, UnitRecord


class StationConsole:
    """Prints unit results and changes of the station's readiness and broker link."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out or sys.stdout
        self._shown: tuple[bool, tuple[str, ...]] | None = None
        self._link: bool | None = None

    def say(self, line: str) -> None:
        """One line, timestamped, flushed at once (a pipe or the journal sees it now)."""
        stamp = datetime.now().astimezone().strftime("%H:%M:%S")
        print(f"{stamp} {line}", file=self._out, flush=True)

    def unit(self, record: UnitRecord) -> None:
        """A unit's record was stored: slot, serial, outcome, duration."""
        seconds = (record.finished_at - record.started_at).total_seconds()
        verdict = record.outcome.upper()
        if record.failure is not None:
            f = record.failure
            where = f" ({f.region})" if f.region else ""
            verdict += f" {f.code} at {f.stage}{where}: {f.detail}"
        self.say(f"unit slot {record.slot} serial {record.serial or '-'}: {verdict} in "
                 f"{seconds:.1f} s (record {record.seq})")

    def status(self, status: StationStatus) -> None:
        """Say what the station waits for, whenever that changes."""
        shown = (status.accepting_units, status.blocked)
        if shown == self._shown:
            return
        self._shown = shown
        if status.blocked:
            self.say("waiting: " + "; ".join(status.blocked))
        elif status.accepting_units:
            self.say("ready: clamp a board")

    def link(self, connected: bool, detail: str) -> None:
        """The broker link came up or went down."""
        if connected == self._link:
            return
        self._link = connected
        self.say(f"broker: {detail}")
