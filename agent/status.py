"""The station's status as the plant sees it, kept in one place and published when it changes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from agent import __version__
from agent.messages import JobProgress, StationStatus


@dataclass(frozen=True)
class _Fields:
    accepting_units: bool = False
    blocked: tuple[str, ...] = ()
    job: JobProgress | None = None
    outbox_depth: int = 0
    last_seq: int = 0
    link_error: str | None = None
    rollout: dict[str, Any] | None = None


class StatusBoard:
    """Latest status fields; ``changed`` is set whenever one of them changes."""

    def __init__(self, station_id: str) -> None:
        self.station_id = station_id
        self._fields = _Fields()
        self.changed = asyncio.Event()

    def update(self, **changes: Any) -> None:
        """Change some fields; wakes the publisher only when something really changed."""
        updated = replace(self._fields, **changes)
        if updated != self._fields:
            self._fields = updated
            self.changed.set()

    @property
    def accepting_units(self) -> bool:
        """True when the station would start a unit now."""
        return self._fields.accepting_units

    @property
    def blocked(self) -> tuple[str, ...]:
        """Why the station does not start units (empty when it does)."""
        return self._fields.blocked

    def snapshot(self) -> StationStatus:
        """The retained status message."""
        f = self._fields
        return StationStatus(station=self.station_id, state="online",
                             accepting_units=f.accepting_units, blocked=f.blocked, job=f.job,
                             outbox_depth=f.outbox_depth, last_seq=f.last_seq,
                             link_error=f.link_error, rollout=f.rollout,
                             agent_version=__version__, at=datetime.now(UTC))

    def offline(self) -> StationStatus:
        """The last-will status: what the broker publishes when the station vanishes."""
        return StationStatus(station=self.station_id, state="offline", agent_version=__version__)
