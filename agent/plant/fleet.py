"""The plant's live view of its stations, kept from their retained status messages and records.

:class:`FleetWatch` subscribes to every station's status (retained: a fresh watcher learns the whole
fleet at once) and, as an observer, to their records. It keeps one :class:`StationView` per station
(online or offline and since when, active and staged sets, job progress, outbox depth, blocked
reasons) and tells listeners about each change; the rollout engine and the console read it.
A status that cannot be read is logged and skipped: one broken station must not blind the plant.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiomqtt
from pydantic import ValidationError

from agent.errors import BadMessage
from agent.firmware.rollout import RolloutSummary, SetState
from agent.wire.codec import parse_inbound
from agent.wire.messages import JobProgress, StationStatus, UnitRecord
from agent.wire.mqtt import Backoff, BrokerEndpoint, make_client
from agent.wire.topics import ALL_RECORDS, ALL_STATUS, station_of

log = logging.getLogger(__name__)
MAX_STATUS_BYTES = 1024 * 1024


@dataclass
class StationView:
    """What the plant knows of one station right now."""

    station: str
    online: bool
    since: datetime
    group: str | None = None
    active: dict[str, str] = field(default_factory=dict)
    staged: list[str] = field(default_factory=list)
    job: JobProgress | None = None
    outbox_depth: int = 0
    blocked: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """For the console."""
        return {"station": self.station, "online": self.online, "since": self.since.isoformat(),
                "group": self.group, "active": self.active, "staged": self.staged,
                "job": self.job.model_dump(mode="json") if self.job else None,
                "outbox_depth": self.outbox_depth, "blocked": list(self.blocked)}


Listener = Callable[[str, dict[str, Any]], None]


class FleetWatch:
    """Subscribes to the fleet's status and records; see the module doc."""

    def __init__(self, *, endpoint: BrokerEndpoint, client_id: str) -> None:
        self._endpoint = endpoint
        self._client_id = client_id
        self.stations: dict[str, StationView] = {}
        self.listeners: list[Listener] = []
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Watch until cancelled, reconnecting with backoff."""
        backoff = Backoff(base=0.2, cap=5.0)
        while True:
            try:
                async with make_client(self._endpoint, client_id=self._client_id) as client:
                    await client.subscribe(ALL_STATUS, qos=1)
                    await client.subscribe(ALL_RECORDS, qos=0)
                    self.connected.set()
                    backoff.reset()
                    async for message in client.messages:
                        payload = message.payload
                        if isinstance(payload, bytes):
                            self.take(str(message.topic), payload)
            except aiomqtt.MqttError as exc:
                log.warning("fleet watch link down: %s", exc)
            self.connected.clear()
            await asyncio.sleep(backoff.next_delay())

    def take(self, topic: str, payload: bytes) -> None:
        """One message from a station topic."""
        station = station_of(topic)
        if station is None or not payload:
            return
        kind = topic.rsplit("/", 1)[-1]
        try:
            if kind == "status":
                self._status(station, parse_inbound(StationStatus, payload,
                                                    max_bytes=MAX_STATUS_BYTES))
            elif kind == "records":
                self._record(parse_inbound(UnitRecord, payload, max_bytes=MAX_STATUS_BYTES))
        except (BadMessage, ValidationError) as exc:
            log.warning("unreadable %s from %s skipped: %s", kind, station, exc)

    def _status(self, station: str, status: StationStatus) -> None:
        online = status.state == "online"
        view = self.stations.get(station)
        at = status.at or datetime.now(UTC)
        if view is None:
            view = self.stations[station] = StationView(station, online, at)
        elif view.online != online:
            view.online, view.since = online, at
        view.group = status.group or view.group
        if online or status.rollout is not None:  # a last will carries no figures: keep the last
            summary = RolloutSummary.model_validate(status.rollout or {})
            view.active = dict(summary.active)
            view.staged = [s.set_id for s in summary.sets if s.state == SetState.STAGED]
            view.job, view.outbox_depth, view.blocked = (status.job, status.outbox_depth,
                                                         status.blocked)
        self._tell("station", view.as_json())

    def _record(self, record: UnitRecord) -> None:
        self._tell("unit", {"station": record.station, "serial": record.serial,
                            "outcome": record.outcome, "set_id": record.firmware_set_id,
                            "failure_code": record.failure.code if record.failure else None,
                            "finished_at": record.finished_at.isoformat()})

    def _tell(self, kind: str, body: dict[str, Any]) -> None:
        for listener in self.listeners:
            listener(kind, body)

    def online_since(self, station: str) -> tuple[bool, datetime | None]:
        """Whether the station is online, and since when (None: never heard of)."""
        view = self.stations.get(station)
        return (False, None) if view is None else (view.online, view.since)

    def active_set(self, station: str, product: str) -> str | None:
        """The set the station last reported active for ``product``."""
        view = self.stations.get(station)
        return None if view is None else view.active.get(product)

    def group_members(self, group: str) -> list[str]:
        """Stations that reported ``group``, sorted."""
        return sorted(s for s, v in self.stations.items() if v.group == group)
