"""Two recorder processes on one PostgreSQL share the records; killing one loses nothing.

The stations' resend timeout is an hour here: every record that reaches the database got there
through the shared subscription, the surviving recorder, and the resend the killed recorder's
last will triggered, never through the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg

from agent.plant.audit import audit
from agent.plant.backends import open_backend
from agent.sim.broker import LocalBroker
from agent.sim.records import fill_outbox
from agent.station.link import Link
from agent.station.outbox import Outbox
from agent.station.status import StatusBoard
from agent.station.store import StationStore
from agent.wire.mqtt import Backoff, BrokerEndpoint, make_client
from agent.wire.topics import RECORDER_STATES
from tests.helpers import eventually

STATIONS = 4
PER_STATION = 1500
HOUR = 3600.0


async def ignore(_payload: bytes, _topic: str) -> None:
    return None


@contextlib.asynccontextmanager
async def station_links(tmp_path: Path, endpoint: BrokerEndpoint
                        ) -> AsyncIterator[list[Outbox]]:
    """STATIONS stations, each with PER_STATION chained records waiting in its outbox."""
    stores, outboxes, tasks = [], [], []
    for n in range(STATIONS):
        station = f"st-{n}"
        store = await StationStore.open(tmp_path / station / "station.db")
        outbox = Outbox(store)
        await fill_outbox(store, outbox, station, PER_STATION)
        stores.append(store)
        outboxes.append(outbox)
        link = Link(endpoint=endpoint, station_id=station, outbox=outbox,
                    status=StatusBoard(station), on_job=ignore, ack_timeout_s=HOUR,
                    session_expiry_s=600, max_message_bytes=256 * 1024,
                    backoff=Backoff(base=0.1, cap=1))
        tasks.append(link.run)
    running = [asyncio.create_task(run()) for run in tasks]
    try:
        yield outboxes
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for store in stores:
            await store.close()


def start_recorder(n: int, db: str, port: int, folder: Path) -> subprocess.Popen[bytes]:
    log = (folder / f"recorder-{n}.log").open("wb")
    with log:
        return subprocess.Popen([sys.executable, "-m", "agent", "recorder", "--db", db,
                                 "--broker", f"127.0.0.1:{port}", "--client-id",
                                 f"plant-recorder-{n}", "--batch-max", "50"],
                                stdout=log, stderr=subprocess.STDOUT)


async def stored(db: str) -> int:
    async with await psycopg.AsyncConnection.connect(db) as conn:
        cursor = await conn.execute("SELECT COUNT(*) FROM records")
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def test_a_recorder_killed_mid_flow_loses_nothing_and_stores_nothing_twice(
        tmp_path: Path, pg_url: str) -> None:
    broker = LocalBroker(tmp_path / "broker", extra_config="allow_anonymous true\n"
                         "max_queued_messages 100000\n")
    await broker.start()
    endpoint = BrokerEndpoint(host="127.0.0.1", port=broker.port)
    states: list[dict[str, str]] = []
    recorders: list[subprocess.Popen[bytes]] = []
    watcher = make_client(endpoint, client_id="state-watcher")
    try:
        async with watcher:
            await watcher.subscribe(RECORDER_STATES, qos=1)

            async def watch() -> None:
                async for message in watcher.messages:
                    assert isinstance(message.payload, bytes)
                    states.append(json.loads(message.payload))

            watching = asyncio.create_task(watch())
            recorders = [start_recorder(n, pg_url, broker.port, tmp_path) for n in (1, 2)]
            await eventually(lambda: len([s for s in states if s["state"] == "online"]) == 2,
                             timeout=60, what="both recorders online")
            async with station_links(tmp_path, endpoint) as outboxes:
                total = STATIONS * PER_STATION
                await eventually(lambda: _at_least(pg_url, 300), timeout=60,
                                 what="records flowing")
                recorders[0].send_signal(signal.SIGKILL)
                at_kill = await stored(pg_url)
                assert at_kill < total, "the flow ended before the kill: the test proves nothing"

                async def drained() -> bool:
                    depths = [await outbox.depth() for outbox in outboxes]
                    return sum(depths) == 0

                await eventually(drained, timeout=120, what="every outbox acknowledged")
            assert {"recorder": "plant-recorder-1", "state": "gone"} in [
                {k: s[k] for k in ("recorder", "state")} for s in states]
            watching.cancel()
    finally:
        for process in recorders:
            if process.poll() is None:
                process.terminate()
            await asyncio.to_thread(process.wait)
        await broker.stop()
    backend = await open_backend(pg_url)
    try:
        assert await stored(pg_url) == total
        twice = await backend.fetch("SELECT station, seq FROM records GROUP BY station, seq"
                                    " HAVING COUNT(*) > 1")
        assert twice == []
        found = await audit(backend)
        assert [(f.station, f.records, f.clean) for f in found] == [
            (f"st-{n}", PER_STATION, True) for n in range(STATIONS)]
    finally:
        await backend.close()


async def _at_least(db: str, count: int) -> bool:
    return await stored(db) >= count
