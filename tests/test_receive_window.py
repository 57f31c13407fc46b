"""A client holds at most its Receive Maximum of received messages, whatever the broker sends.

mosquitto 2.0.11 keeps to a v5 client's Receive Maximum only while no PUBACK comes back: with a
consumer acknowledging as it goes it sent thousands past a maximum of 50, and they piled up in
aiomqtt's unbounded queue (a recorder grew by hundreds of megabytes). The client now stops reading
its socket at that many and reads on once one is taken; nothing is dropped.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.sim.broker import LocalBroker
from agent.wire.mqtt import BrokerEndpoint, make_client
from agent.wire.receive_window import ReceiveQueue

MESSAGES = 3000
WINDOW = 50


@pytest.fixture
async def roomy_broker(tmp_path: Path) -> LocalBroker:
    """A broker that queues what its subscriber does not read yet (a fleet's configuration)."""
    local = LocalBroker(tmp_path / "broker", extra_config="allow_anonymous true\n"
                        "max_queued_messages 100000\nmax_queued_bytes 0\n")
    await local.start()
    yield local  # type: ignore[misc]
    await local.stop()


async def test_an_acknowledging_consumer_never_holds_more_than_its_window(
        roomy_broker: LocalBroker) -> None:
    endpoint = BrokerEndpoint(host="127.0.0.1", port=roomy_broker.port)
    consumer = make_client(endpoint, client_id="slow-consumer", receive_maximum=WINDOW,
                           manual_ack=True)
    publisher = make_client(endpoint, client_id="fast-publisher")
    deepest = 0
    seen: set[bytes] = set()
    async with consumer, publisher:
        await consumer.subscribe("window/test", qos=1)

        async def flood() -> None:
            for start in range(0, MESSAGES, 100):
                await asyncio.gather(*(
                    publisher.publish("window/test", b"%06d" % n + b"x" * 2000, qos=1)
                    for n in range(start, start + 100)))

        flooding = asyncio.create_task(flood())
        held = []
        async with asyncio.timeout(120):
            async for message in consumer.messages:
                deepest = max(deepest, consumer._queue.qsize())  # received, not yet taken
                assert isinstance(message.payload, bytes)
                seen.add(message.payload[:6])
                held.append(message)
                if len(held) == 25:  # acknowledge in batches, slower than the publisher
                    await asyncio.sleep(0.01)
                    for each in held:
                        consumer.ack(each)
                    held.clear()
                if len(seen) == MESSAGES:
                    break
        await flooding
    assert len(seen) == MESSAGES  # nothing dropped
    assert deepest <= WINDOW, f"{deepest} messages waited in the client, window {WINDOW}"


def test_the_queue_says_full_at_the_window_and_room_below_it() -> None:
    calls: list[str] = []
    queue: ReceiveQueue[int] = ReceiveQueue(2, full=lambda: calls.append("full"),
                                            room=lambda: calls.append("room"))
    queue.put_nowait(1)
    queue.put_nowait(2)
    queue.put_nowait(3)  # already read from the socket: kept, never dropped
    assert calls == ["full", "full"]
    assert [queue.get_nowait() for _ in range(3)] == [1, 2, 3]
    assert calls == ["full", "full", "room", "room"]


def test_a_window_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one message"):
        ReceiveQueue(0, full=lambda: None, room=lambda: None)
