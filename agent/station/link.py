"""The station's MQTT link: connect, reconnect, deliver records, take jobs and acks, show status.

aiomqtt never reconnects by itself: :meth:`Link.run` re-enters the client with capped, jittered
backoff. While the broker is away the line keeps programming (records wait in the outbox) and they
drain oldest first once the link is back. A record leaves the outbox only when the recorder's ack
names it; one that was published but not acknowledged within ``ack_timeout_s`` is sent again (the
recorder stores by record id, so a repeat is harmless).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import aiomqtt

from agent.errors import BadMessage, FirmwareSetError
from agent.station.outbox import Outbox, PendingRecord
from agent.station.status import StatusBoard
from agent.wire.codec import encode, parse_inbound
from agent.wire.messages import RecordAck, RecorderState, Reject
from agent.wire.mqtt import Backoff, BrokerEndpoint, CheckedClient, PublishRefused, make_client
from agent.wire.topics import RECORDER_STATES, StationTopics

log = logging.getLogger(__name__)

WINDOW = 1000  # records in flight (published, not yet acknowledged) at most
BATCH = 100  # publishes awaited together
OFFLINE_PUBLISH_S = 2.0  # how long a stopping station waits to leave its offline status
Handler = Callable[[bytes, str], Awaitable[object]]


class Link:
    """One station's connection to the plant broker."""

    def __init__(self, *, endpoint: BrokerEndpoint, station_id: str, outbox: Outbox,
                 status: StatusBoard, on_job: Handler, ack_timeout_s: float,
                 session_expiry_s: int, max_message_bytes: int,
                 backoff: Backoff) -> None:
        self._endpoint = endpoint
        self._topics = StationTopics(station_id)
        self._station_id = station_id
        self._outbox = outbox
        self._outbox_changed = outbox.watch()
        self._status = status
        self._handlers: dict[str, Handler] = {self._topics.job: on_job,
                                              self._topics.acks: self._on_ack,
                                              RECORDER_STATES: self._on_recorder_state}
        self._client: CheckedClient | None = None
        self._ack_timeout_s = ack_timeout_s
        self._session_expiry_s = session_expiry_s
        self._max_bytes = max_message_bytes
        self._backoff = backoff
        self._sent_at: dict[int, float] = {}
        self.connected = asyncio.Event()
        self.listeners: list[Callable[[bool, str], None]] = []  # (connected, what happened)

    def _tell(self, connected: bool, detail: str) -> None:
        for listener in self.listeners:
            listener(connected, detail)

    def add_handler(self, topic: str, handler: Handler) -> None:
        """Route messages on ``topic`` (subscribed at every connect) to ``handler``."""
        self._handlers[topic] = handler

    async def run(self) -> None:
        """Stay connected until cancelled.

        The broker is told our maximum packet size (twice the message limit): a payload up to that
        arrives and is rejected with a reason; anything larger the broker drops before sending.
        """
        will = aiomqtt.Will(self._topics.status, encode(self._status.offline()), qos=1,
                            retain=True)
        while True:
            client = make_client(self._endpoint, client_id=self._station_id, will=will,
                                 persistent=True, session_expiry_s=self._session_expiry_s,
                                 max_packet_bytes=2 * self._max_bytes + 4096)
            started = time.monotonic()
            try:
                async with client:
                    log.info("connected to %s", self._endpoint.address)
                    await self._serve(client)
            except* aiomqtt.MqttError as group:  # from the client or from any of _serve's tasks
                log.warning("broker link down: %s", group.exceptions[0])
                self._tell(False, f"no connection to {self._endpoint.address} "
                                  f"({group.exceptions[0]}); retrying")
            finally:
                self._client = None
                self.connected.clear()
                self._sent_at.clear()  # after a reconnect everything unacknowledged goes again
            if time.monotonic() - started > 30:
                self._backoff.reset()
            await asyncio.sleep(self._backoff.next_delay())

    async def _serve(self, client: CheckedClient) -> None:
        for topic in self._handlers:
            await client.subscribe(topic, qos=1)
        await client.publish_checked(self._topics.status, encode(self._status.snapshot()),
                                     retain=True)
        self._client = client
        self.connected.set()
        self._tell(True, f"connected to {self._endpoint.address}")
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read(client), name="link-read")
                group.create_task(self._deliver(client), name="link-deliver")
                group.create_task(self._publish_status(client), name="link-status")
        except asyncio.CancelledError:
            await self._say_offline(client)
            raise

    async def _say_offline(self, client: CheckedClient) -> None:
        """A clean stop: leave an offline status retained (a clean DISCONNECT sends no will)."""
        try:
            async with asyncio.timeout(OFFLINE_PUBLISH_S):
                await client.publish_checked(self._topics.status,
                                             encode(self._status.stopped()), retain=True)
        except (aiomqtt.MqttError, PublishRefused, TimeoutError) as exc:
            log.warning("could not leave an offline status: %s", exc)

    async def _read(self, client: CheckedClient) -> None:
        async for message in client.messages:
            topic = message.topic.value
            handler = self._handlers.get(topic)
            if handler is None and topic.startswith(RECORDER_STATES.split("+")[0]):
                handler = self._on_recorder_state
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if handler is None:
                log.warning("message on unexpected topic %s ignored", topic)
                continue
            try:
                await handler(payload, topic)
            except (BadMessage, FirmwareSetError) as exc:
                await self.reject(topic, exc)

    async def reject(self, topic: str, exc: BadMessage | FirmwareSetError) -> None:
        """Tell the plant why a message on ``topic`` was refused (dropped while offline)."""
        client = self._client
        ref = exc.ref if isinstance(exc, BadMessage) else exc.set_id
        log.warning("rejected message on %s: %s", topic, exc)
        reject = Reject(station=self._station_id, topic=topic, ref=ref, code=exc.code,
                        reason=exc.reason, at=datetime.now(UTC))
        if client is None:
            return
        try:
            await client.publish_checked(self._topics.rejects, encode(reject))
        except PublishRefused as exc:
            log.error("%s", exc)  # noqa: TRY400 (a refusal, not a crash)

    async def _on_ack(self, payload: bytes, topic: str) -> None:
        ack = parse_inbound(RecordAck, payload, max_bytes=self._max_bytes)
        await self._outbox.forget(ack.record_ids)

    async def _on_recorder_state(self, payload: bytes, topic: str) -> None:
        """A recorder is gone (its will): what it held unacknowledged goes again now.

        A broker does not hand the messages in flight to a dead member of a shared subscription
        to the others (mosquitto 2.0 drops them with its session): only a resend brings them.
        """
        state = parse_inbound(RecorderState, payload, max_bytes=self._max_bytes)
        if state.state == "gone":
            log.info("recorder %s gone: resending every unacknowledged record", state.recorder)
            self._sent_at.clear()
            self._outbox_changed.set()

    async def _deliver(self, client: CheckedClient) -> None:
        while True:
            due = await self._due()
            if not due:
                self._outbox_changed.clear()
                try:
                    async with asyncio.timeout(self._ack_timeout_s / 4):
                        await self._outbox_changed.wait()
                except TimeoutError:
                    pass
                continue
            for start in range(0, len(due), BATCH):
                chunk = due[start:start + BATCH]
                await asyncio.gather(*(self._publish_record(client, r) for r in chunk))

    async def _due(self) -> list[PendingRecord]:
        pending = await self._outbox.pending(limit=WINDOW)
        held = {record.seq for record in pending}
        self._sent_at = {seq: t for seq, t in self._sent_at.items() if seq in held}
        now = time.monotonic()
        return [r for r in pending
                if now - self._sent_at.get(r.seq, -self._ack_timeout_s) >= self._ack_timeout_s]

    async def _publish_record(self, client: CheckedClient, record: PendingRecord) -> None:
        try:
            await client.publish_checked(self._topics.records, record.payload)
            self._status.update(link_error=None)
        except PublishRefused as exc:
            # Not authorised or quota: keep the record, say so on the status, retry later.
            self._status.update(link_error=str(exc))
            log.error("%s", exc)  # noqa: TRY400 (a refusal, not a crash)
        self._sent_at[record.seq] = time.monotonic()

    async def _publish_status(self, client: CheckedClient) -> None:
        while True:
            await self._status.changed.wait()
            self._status.changed.clear()
            try:
                await client.publish_checked(self._topics.status,
                                             encode(self._status.snapshot()), retain=True)
            except PublishRefused as exc:
                log.error("%s", exc)  # noqa: TRY400 (a refusal, not a crash)
