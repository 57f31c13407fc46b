"""The plant-side recorder: stores every station's unit records, then acknowledges them.

Three stages: receive (into the client's bounded queue) -> a batch committed in one transaction
-> acks. A message is acknowledged to the broker (its PUBACK) and to its station (a RecordAck)
only after the commit that stores it, so a station forgets a record only once the plant really
holds it, and a recorder that dies holds nothing it has acknowledged.

Any number of recorders share the load through one MQTT v5 shared subscription
(``$share/<group>/fixture/v1/station/+/records``). Storage is idempotent on record id, so a record
that reaches two recorders (a resend) is stored once. Each recorder's last will says "gone": a
broker does not hand the unacknowledged messages of a dead member to the others (mosquitto 2.0
drops them with the session; README "Traceability at plant scale"), so the stations resend
everything unacknowledged at once and the other recorders take it, without waiting for the
stations' resend timeout. Sessions are clean for the same reason: a persistent session of a dead
member would keep taking its share of new records.

Backpressure: the recorder announces ``queue_size`` as its MQTT v5 Receive Maximum, which is also
its queue's bound, so a slow database slows the broker rather than growing memory. mosquitto
2.0.11 overruns that maximum while acks flow; the client then stops reading its socket with that
many received messages waiting (:mod:`agent.wire.receive_window`), so what the recorder holds is
bounded either way: the client's window and the batch being committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiomqtt

from agent.plant.records import Incoming, RecordStore
from agent.wire.codec import encode
from agent.wire.messages import RecordAck, RecorderState
from agent.wire.mqtt import (
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
    Backoff,
    BrokerEndpoint,
    CheckedClient,
    PublishRefused,
    make_client,
)
from agent.wire.topics import StationTopics, recorder_state, shared_records, station_of

log = logging.getLogger(__name__)

DEFAULT_GROUP = "recorders"
QUEUE_SIZE = 1000  # messages received and not yet taken into a batch, at most
BATCH_MAX = 500  # records per transaction
GONE_PUBLISH_S = 2.0

Received = tuple[Incoming, aiomqtt.Message]


class Recorder:
    """Subscribes to every station's records (shared), stores them, acknowledges them."""

    def __init__(self, *, endpoint: BrokerEndpoint, store: RecordStore,
                 client_id: str = "plant-recorder", group: str = DEFAULT_GROUP,
                 reconnect_max_s: float = RECONNECT_MAX_S, queue_size: int = QUEUE_SIZE,
                 batch_max: int = BATCH_MAX) -> None:
        self._endpoint = endpoint
        self._store = store
        self._client_id = client_id
        self._group = group
        self._queue_size = queue_size
        self._batch_max = batch_max
        # Stations resend until acknowledged, so every second the recorder is away is a second
        # of records piling up at every station: reconnect no slower than they do.
        self.backoff = Backoff(base=min(RECONNECT_MIN_S, reconnect_max_s), cap=reconnect_max_s)
        self.stored = 0  # records acknowledged (new or already stored)
        self.inserted = 0  # records this recorder added to the database
        self.connected = asyncio.Event()

    def _state(self, state: str) -> bytes:
        return encode(RecorderState(recorder=self._client_id, state=state))  # type: ignore[arg-type]

    async def run(self) -> None:
        """Serve until cancelled, reconnecting with backoff (reset by each successful subscribe)."""
        backoff = self.backoff
        topic = recorder_state(self._client_id)
        will = aiomqtt.Will(topic, self._state("gone"), qos=1)
        while True:
            client = make_client(self._endpoint, client_id=self._client_id, will=will,
                                 receive_maximum=self._queue_size, manual_ack=True)
            try:
                async with client:
                    await self._serve(client, topic)
            except* aiomqtt.MqttError as group:  # anything else is a bug: let it surface
                log.warning("recorder link down: %s", group.exceptions[0])
            self.connected.clear()
            await asyncio.sleep(backoff.next_delay())

    async def _serve(self, client: CheckedClient, topic: str) -> None:
        await client.subscribe(shared_records(self._group), qos=1)
        try:
            await client.publish_checked(topic, self._state("online"))
        except PublishRefused as exc:  # an ACL without the state topic: works, resends later
            log.error("%s: stations will resend what a dead recorder held only after their "  # noqa: TRY400
                      "ack timeout", exc)
        self.connected.set()
        self.backoff.reset()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._store_and_ack(client, group))
        except asyncio.CancelledError:
            # A clean DISCONNECT sends no will: say "gone" ourselves, so stations resend what
            # the broker had queued for us.
            with contextlib.suppress(aiomqtt.MqttError, PublishRefused, TimeoutError):
                async with asyncio.timeout(GONE_PUBLISH_S):
                    await client.publish_checked(topic, self._state("gone"))
            raise

    async def _store_and_ack(self, client: CheckedClient, group: asyncio.TaskGroup) -> None:
        """Batches straight from the client's receive queue (its window is the bound; the client
        reads the socket on while a batch commits). A message is only ever acked on the
        connection that received it: a new connection has a new client and a new queue."""
        messages = aiter(client.messages)
        while True:
            received = [await anext(messages), *client.take_received(self._batch_max - 1)]
            batch: list[Received] = []
            for message in received:
                station = station_of(message.topic.value)
                if station is None or not isinstance(message.payload, bytes):
                    client.ack(message)
                    continue
                batch.append((Incoming(station, message.payload), message))
            before = self._store.inserted
            acks = await self._store.store_batch([item for item, _ in batch])
            self.inserted += self._store.inserted - before
            # committed: now, and only now, the broker and the stations may forget them
            for _, message in batch:
                client.ack(message)
            self.stored += sum(len(ids) for ids in acks.values())
            # The next batch does not wait for these publishes' PUBACKs: with reading paused by
            # a full receive window (a broker overrunning the maximum) they may sit unread behind
            # records only the next batches make room for. A failure still ends the connection.
            group.create_task(self._publish_acks(client, acks))

    async def _publish_acks(self, client: CheckedClient, acks: dict[str, list[str]]) -> None:
        # No time limit on the PUBACKs: one may queue behind everything a broker sent past our
        # Receive Maximum, read only as fast as records are stored; a connection that breaks
        # fails them at once (CheckedClient), and a lost ack only means the station resends.
        publishes = []
        for station, ids in acks.items():
            for start in range(0, len(ids), 1000):
                ack = RecordAck(record_ids=tuple(ids[start:start + 1000]))
                publishes.append(client.publish_checked(StationTopics(station).acks, encode(ack),
                                                        timeout=None))
        for result in await asyncio.gather(*publishes, return_exceptions=True):
            if isinstance(result, PublishRefused):  # the station resends; we store it once
                log.error("%s", result)
            elif isinstance(result, BaseException):
                raise result
