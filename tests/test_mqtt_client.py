"""CheckedClient outlives its event loop quietly.

paho closes a client's socket when the client is collected (``Client.__del__`` calls
``_reset_sockets``), which may be after the loop it ran on has closed, e.g. once a command's
asyncio.run has returned: the socket-close hook must not reach for that loop then. It did, and a
station printed "RuntimeError: Event loop is closed" as it exited.
"""

from __future__ import annotations

import asyncio
import logging

import aiomqtt
import pytest
from paho.mqtt.client import MQTT_LOG_DEBUG, MQTT_LOG_ERR

from agent.sim.broker import LocalBroker
from agent.wire.mqtt import BrokerEndpoint, CheckedClient, make_client


async def test_a_socket_closed_after_the_loop_closed_raises_nothing(broker: LocalBroker) -> None:
    async def connect() -> CheckedClient:
        client = make_client(BrokerEndpoint(host="127.0.0.1", port=broker.port),
                             client_id="outlives-its-loop")
        await client.__aenter__()  # never left: the socket stays open
        return client

    client = await asyncio.to_thread(asyncio.run, connect())
    client._client._reset_sockets()  # what paho's __del__ does


async def test_a_cancel_that_meets_a_reply_is_not_swallowed() -> None:
    """Python 3.11's wait_for returns the reply when it arrives in the same loop iteration as a
    cancel, and the cancel is lost. A station whose SIGTERM met a SUBACK kept serving, and its
    shutdown waited for a link task nobody would cancel again (1 stop in 10 hung)."""
    client = make_client(BrokerEndpoint(host="127.0.0.1", port=1), client_id="t")
    reply: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    waiting = asyncio.create_task(client._wait_for(reply, timeout=10))
    await asyncio.sleep(0)  # the task now waits for the reply
    reply.set_result(1)  # the SUBACK arrives ...
    waiting.cancel()  # ... as the station is told to stop
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_a_late_suback_for_an_abandoned_subscribe_is_not_an_error(
        caplog: pytest.LogCaptureFixture) -> None:
    client = make_client(BrokerEndpoint(host="127.0.0.1", port=1), client_id="t")
    with caplog.at_level(logging.DEBUG):
        client._on_subscribe(client._client, None, 3, [], None)  # no subscribe 3 is waiting
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_publish_failed_by_a_closed_connection_says_what_paho_last_saw() -> None:
    client = make_client(BrokerEndpoint(host="127.0.0.1", port=1), client_id="t")
    waiter: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    client._reasons[7] = waiter
    client._client._easy_log(MQTT_LOG_DEBUG, "Received PUBLISH (m%d)", 3)  # not an error
    client._client._easy_log(MQTT_LOG_ERR, "failed to receive on socket: %s",
                             "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca")
    client._fail_waiters(client._connected)
    with pytest.raises(aiomqtt.MqttError, match="before acknowledging: failed to receive on "
                                                r"socket: \[SSL: TLSV1_ALERT_UNKNOWN_CA\]"):
        await waiter
