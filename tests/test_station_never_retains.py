"""A station publishes its records and rejects without the retain flag; only its status is retained.

A retained record would be handed to every recorder that subscribes later, long after the
station forgot it; a retained reject would accuse a message long gone. The broker cannot forbid
the flag per topic (mosquitto's ACLs know no retain), so the station must never set it. The
observer subscribes with "retain as published", so it sees the flag as the station sent it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.sim.broker import LocalBroker
from agent.wire.mqtt import BrokerEndpoint, make_client
from agent.wire.topics import StationTopics
from tests.helpers import publish, running_station, start_job, station_config

TOPICS = StationTopics("st-test")


async def test_records_and_rejects_are_never_retained(tmp_path: Path,
                                                      broker: LocalBroker) -> None:
    config = station_config(tmp_path, broker.port, slots=[{"name": "a", "backend": "sim-flash"}])
    seen: dict[str, set[bool]] = {}
    observer = make_client(BrokerEndpoint(host="127.0.0.1", port=broker.port),
                           client_id="observer")
    async with observer, running_station(config) as (_, sim):
        await observer.subscribe(f"{TOPICS.base}/#", options=SubscribeOptions(
            qos=1, retainAsPublished=True))
        await start_job(broker.port, "st-test", tmp_path, job_id="wo-retain", units=1)
        assert await sim.operator.cycle_one() == "pass"  # a record
        await publish(broker.port, TOPICS.command, b"not a command")  # a reject
        async with asyncio.timeout(20):
            async for message in observer.messages:
                kind = message.topic.value.rsplit("/", 1)[1]
                seen.setdefault(kind, set()).add(message.retain)
                if {"records", "rejects"} <= seen.keys():
                    break
    assert seen["records"] == {False}
    assert seen["rejects"] == {False}
    assert seen["status"] == {True}  # the observer does see a retain flag where there is one
