"""CheckedClient outlives its event loop quietly.

paho closes a client's socket when the client is collected (``Client.__del__`` calls
``_reset_sockets``), which may be after the loop it ran on has closed, e.g. once a command's
asyncio.run has returned: the socket-close hook must not reach for that loop then. It did, and a
station printed "RuntimeError: Event loop is closed" as it exited.
"""

from __future__ import annotations

import asyncio

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
