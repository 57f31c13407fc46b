"""Plant-side publishing of retained per-station messages (jobs, firmware sets)."""

from __future__ import annotations

from agent.wire.mqtt import BrokerEndpoint, make_client


async def publish_retained(endpoint: BrokerEndpoint, topic: str, payload: bytes, *,
                           client_id: str) -> None:
    """Publish ``payload`` retained at QoS 1 and wait for the broker's successful PUBACK."""
    async with make_client(endpoint, client_id=client_id) as client:
        await client.publish_checked(topic, payload, retain=True)


async def publish_once(endpoint: BrokerEndpoint, topic: str, payload: bytes, *,
                       client_id: str) -> None:
    """Publish ``payload`` at QoS 1, not retained (a command), and wait for a successful PUBACK."""
    async with make_client(endpoint, client_id=client_id) as client:
        await client.publish_checked(topic, payload, retain=False)
