"""The link publishes only records whose transaction has committed.

A record read before its COMMIT can reach the plant and then vanish from the station when the
process dies (SIGKILL, power loss) before the commit: the restarted station records the unit again
under the same seq with another record id. So neither the outbox's reads nor the link's wake-up may
run ahead of the commit.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

from agent.sim.broker import LocalBroker
from agent.wire.codec import encode
from agent.wire.messages import UnitRecord
from agent.wire.mqtt import BrokerEndpoint, make_client
from agent.wire.topics import StationTopics
from tests.conftest import PlantRecorder
from tests.helpers import eventually, running_station, station_config

HELD_OPEN_S = 1.5  # the link wakes at once on an append; this is ample time to misbehave


def a_record(seq: int, record_id: str, prev_digest: str) -> UnitRecord:
    now = datetime.now(UTC)
    return UnitRecord(record_id=record_id, seq=seq, prev_digest=prev_digest, station="st-test",
                      slot="a", job_id="wo-1",
                      product="sensor-node", serial="SN-000001", chip_uid="00", images=(),
                      firmware_set_id="s", manifest_digest="d", started_at=now, finished_at=now,
                      stages=(), outcome="fail", routing="rework", agent_version="test")


async def test_a_record_is_neither_read_nor_published_before_its_commit(
        tmp_path: Path, broker: LocalBroker, recorder: PlantRecorder) -> None:
    config = station_config(tmp_path, broker.port)
    published: list[bytes] = []
    plant = make_client(BrokerEndpoint(host="127.0.0.1", port=broker.port), client_id="watcher")
    async with plant, running_station(config) as (parts, _sim):
        await plant.subscribe(StationTopics("st-test").records, qos=1)

        async def watch() -> None:
            async for message in plant.messages:
                assert isinstance(message.payload, bytes)
                published.append(message.payload)

        watcher = asyncio.create_task(watch())
        await eventually(parts.link.connected.is_set, what="station link")
        record_id = uuid.uuid4().hex
        async with parts.store.transaction() as tx:
            seq = await parts.outbox.append(
                tx, record_id=record_id, build=lambda n, link: encode(a_record(n, record_id, link)))
            assert await parts.outbox.pending() == []  # not committed: not there for readers
            assert await parts.outbox.depth() == 0
            await asyncio.sleep(HELD_OPEN_S)
            assert published == [], "the link published a record before its commit"
            assert await recorder.count() == 0
        await eventually(lambda: len(published) >= 1, what="the record published after commit")

        async def drained() -> bool:
            return await parts.outbox.depth() == 0

        await eventually(drained, what="the record acknowledged")
        assert await recorder.count() == 1
        assert seq == 1
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
