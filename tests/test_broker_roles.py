"""Every identity on the shipped plant broker has its role's rights and nothing more.

All of them connect at once (stations st-a and st-b, both recorders' role, the rollout engine,
the plant tools, the console), each subscribed to everything, and each tries to write every topic
of station st-a and of group line-a. What each may write and what reaches each is compared with
the role table of docs/mqtt.md. The recorder subscribes through a shared subscription, as several
recorders do: mosquitto checks it against the topic of each message it delivers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.wire.mqtt import CheckedClient, PublishRefused, make_client
from agent.wire.topics import StationTopics, group_firmware_set
from tests.secure_broker import SecurePlant, secure_plant

A = StationTopics("st-a")
TOPICS = {"job": A.job, "firmware-set": A.firmware_set, "command": A.command, "acks": A.acks,
          "status": A.status, "records": A.records, "rejects": A.rejects,
          "group firmware-set": group_firmware_set("line-a")}
PLANT_WRITES = {"job", "firmware-set", "command", "group firmware-set"}
ROLES: dict[str, tuple[set[str], set[str]]] = {  # identity: (may write, receives)
    "st-a": ({"status", "records", "rejects"},
             {"job", "firmware-set", "command", "acks", "group firmware-set"}),
    "st-b": (set(), {"group firmware-set"}),
    "plant-recorder-1": ({"acks"}, {"records"}),
    "plant-rollout": (PLANT_WRITES, {"status", "rejects"}),
    "plant-tools": (PLANT_WRITES, {"status", "rejects"}),
    "plant-console": (set(), {"status", "records", "rejects"}),
}
SUBSCRIPTIONS = {"plant-recorder-1": ["$share/recorders/fixture/v1/#"]}
LAST = {"st-a": "job", "st-b": "group firmware-set", "plant-recorder-1": "records",
        "plant-rollout": "status", "plant-tools": "status", "plant-console": "status"}


@pytest.fixture
async def plant(tmp_path: Path) -> AsyncIterator[SecurePlant]:
    async with secure_plant(tmp_path) as running:
        yield running


async def writable(client: CheckedClient) -> set[str]:
    """The topics of TOPICS the broker lets this client publish to."""
    allowed = set()
    for name, topic in TOPICS.items():
        with contextlib.suppress(PublishRefused):
            await client.publish_checked(topic, name.encode())
            allowed.add(name)
    return allowed


async def collect(client: CheckedClient, received: set[str]) -> None:
    """Note the topic name of everything delivered, until the payload b"last"."""
    names = {topic: name for name, topic in TOPICS.items()}
    async for message in client.messages:
        if message.payload == b"last":
            return
        received.add(names.get(message.topic.value, message.topic.value))


async def test_each_identity_has_exactly_its_roles_rights(plant: SecurePlant) -> None:
    received: dict[str, set[str]] = {name: set() for name in ROLES}
    async with contextlib.AsyncExitStack() as stack:
        clients = {name: await stack.enter_async_context(
            make_client(plant.endpoint(name), client_id=name)) for name in ROLES}
        readers = []
        for name, client in clients.items():
            for topic in SUBSCRIPTIONS.get(name, ["fixture/#", "$SYS/#"]):
                await client.subscribe(topic, qos=1)
            readers.append(asyncio.create_task(collect(client, received[name])))
        written = {name: await writable(client) for name, client in clients.items()}
        for name in ROLES:  # published after everything else, so delivered after it too
            writer = next(w for w, (writes, _) in ROLES.items() if LAST[name] in writes)
            await clients[writer].publish_checked(TOPICS[LAST[name]], b"last")
        async with asyncio.timeout(20):
            await asyncio.gather(*readers)
    assert written == {name: writes for name, (writes, _) in ROLES.items()}
    assert received == {name: reads for name, (_, reads) in ROLES.items()}
