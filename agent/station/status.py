"""The station's status as the plant sees it, kept in one place and published when it changes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from agent import __version__
from agent.wire.messages import StationStatus


class StatusBoard:
    """The latest status; ``changed`` is set whenever a field of it changes."""

    def __init__(self, station_id: str, *, group: str | None = None) -> None:
        self.station_id = station_id
        self.group = group
        self._status = StationStatus(station=station_id, state="online", group=group,
                                     agent_version=__version__)
        self.changed = asyncio.Event()
        self.listeners: list[Callable[[StationStatus], None]] = []

    def update(self, **changes: Any) -> None:
        """Change some fields; wakes the publisher (and listeners) only on a real change."""
        updated = self._status.model_copy(update=changes)
        if updated != self._status:
            self._status = updated
            self.changed.set()
            for listener in self.listeners:
                listener(updated)

    @property
    def accepting_units(self) -> bool:
        """True when the station would start a unit now."""
        return self._status.accepting_units

    @property
    def blocked(self) -> tuple[str, ...]:
        """Why the station does not start units (empty when it does)."""
        return self._status.blocked

    def snapshot(self) -> StationStatus:
        """The retained status message, stamped now."""
        return self._status.model_copy(update={"at": datetime.now(UTC)})

    def stopped(self) -> StationStatus:
        """The status a cleanly stopping station leaves behind: offline, with its last figures."""
        return self._status.model_copy(update={"state": "offline", "accepting_units": False,
                                               "at": datetime.now(UTC)})

    def offline(self) -> StationStatus:
        """The last-will status: what the broker publishes when the station vanishes."""
        return StationStatus(station=self.station_id, state="offline", group=self.group,
                             agent_version=__version__)
