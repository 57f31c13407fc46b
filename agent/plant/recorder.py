"""The plant-side recorder: stores every station's unit records, then acknowledges them.

A record is acknowledged only after the transaction that stores it has committed
(:mod:`agent.plant.records`), so a station forgets a record only once the plant really holds it.
"""

from __future__ import annotations

import asyncio
import logging

import aiomqtt

from agent.plant.records import Incoming, RecordStore
from agent.wire.codec import encode
from agent.wire.messages import RecordAck
from agent.wire.mqtt import (
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
    Backoff,
    BrokerEndpoint,
    CheckedClient,
    PublishRefused,
    make_client,
)
from agent.wire.topics import ALL_RECORDS, StationTopics, station_of

log = logging.getLogger(__name__)


class Recorder:
    """Subscribes to every station's records, stores them, acknowledges them."""

    def __init__(self, *, endpoint: BrokerEndpoint, store: RecordStore,
                 client_id: str = "plant-recorder",
                 reconnect_max_s: float = RECONNECT_MAX_S) -> None:
        self._endpoint = endpoint
        self._store = store
        self._client_id = client_id
        # Stations resend until acknowledged, so every second the recorder is away is a second
        # of records piling up at every station: reconnect no slower than they do.
        self.backoff = Backoff(base=min(RECONNECT_MIN_S, reconnect_max_s), cap=reconnect_max_s)
        self._queue: asyncio.Queue[Incoming] = asyncio.Queue()
        self.stored = 0
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Serve until cancelled, reconnecting with backoff (reset by each successful subscribe)."""
        backoff = self.backoff
        while True:
            client = make_client(self._endpoint, client_id=self._client_id, persistent=True,
                                 session_expiry_s=7 * 86400)
            try:
                async with client:
                    await client.subscribe(ALL_RECORDS, qos=1)
                    self.connected.set()
                    backoff.reset()
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._read(client))
                        group.create_task(self._write(client))
            except* aiomqtt.MqttError as group:  # anything else is a bug: let it surface
                log.warning("recorder link down: %s", group.exceptions[0])
            self.connected.clear()
            await asyncio.sleep(backoff.next_delay())

    async def _read(self, client: CheckedClient) -> None:
        async for message in client.messages:
            station = station_of(message.topic.value)
            if station is None or not isinstance(message.payload, bytes):
                continue
            await self._queue.put(Incoming(station, message.payload))

    async def _write(self, client: CheckedClient) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < 500:
                batch.append(self._queue.get_nowait())
            acks = await self._store.store_batch(batch)
            self.stored += sum(len(ids) for ids in acks.values())
            for station, ids in acks.items():
                for start in range(0, len(ids), 1000):
                    ack = RecordAck(record_ids=tuple(ids[start:start + 1000]))
                    try:
                        await client.publish_checked(StationTopics(station).acks, encode(ack))
                    except PublishRefused as exc:  # the station resends; we store it once
                        log.error("%s", exc)  # noqa: TRY400 (an ACL refusal, not a crash)
