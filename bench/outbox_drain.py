"""How fast a backlog of unit records drains after an outage, against plain MQTT delivery.

One run, one private mosquitto on loopback, N synthetic unit records of the real size:

* reference: one aiomqtt client publishes the N payloads at QoS 1 (awaiting each PUBACK) to a
  subscriber that counts them: delivery with no durability on either side;
* agent: the same N records sit in the station's SQLite outbox (WAL, synchronous=FULL); the link
  publishes them with reason codes checked, the recorder stores each durably and acknowledges it,
  and the station deletes it: the time until the outbox is empty.

The figure is agent time over reference time (the price of "forgotten only when the plant holds
it"). Absolute times on shared machines are noise. Last line: one JSON object.

    .venv/bin/python bench/outbox_drain.py [--records 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from agent.plant.recorder import Recorder
from agent.plant.records import RecordStore, open_record_db
from agent.sim.broker import LocalBroker
from agent.station.link import Link
from agent.station.outbox import Outbox
from agent.station.status import StatusBoard
from agent.station.store import StationStore
from agent.wire.codec import encode
from agent.wire.messages import ImageResult, StageTiming, UnitRecord
from agent.wire.mqtt import Backoff, BrokerEndpoint, make_client

STATION = "bench-st"


def record(seq: int) -> bytes:
    """A unit record with four images and a full set of stage timings (about 2 KB)."""
    now = datetime.now(UTC)
    images = tuple(ImageResult(name=f"image{i}", role="application", version="1.0.0",
                               address=i << 16, size=65536, sha256="ab" * 32, key_ref="hsm:k",
                               readback_sha256="ab" * 32, verified=True) for i in range(4))
    stages = tuple(StageTiming(stage=f"s{i}", duration_ms=1.5, ok=True) for i in range(11))
    return encode(UnitRecord(
        record_id=uuid.uuid4().hex, seq=seq, prev_digest="0" * 64, station=STATION, slot="a",
        job_id="wo-1",
        product="p", serial=f"SN-{seq:06d}", chip_uid="00" * 8, firmware_set_id="set",
        manifest_digest="cd" * 32, images=images, started_at=now, finished_at=now,
        stages=stages, outcome="pass", routing="ship", agent_version="bench"))


async def reference(endpoint: BrokerEndpoint, payloads: list[bytes]) -> float:
    received = asyncio.Event()
    count = 0
    async with make_client(endpoint, client_id="bench-sub") as sub:
        await sub.subscribe("bench/records", qos=1)

        async def consume() -> None:
            nonlocal count
            async for _ in sub.messages:
                count += 1
                if count == len(payloads):
                    received.set()

        task = asyncio.create_task(consume())
        async with make_client(endpoint, client_id="bench-pub") as pub:
            start = time.perf_counter()
            for payload in payloads:
                await pub.publish("bench/records", payload, qos=1)
            await received.wait()
            elapsed = time.perf_counter() - start
        task.cancel()
    return elapsed


async def agent(endpoint: BrokerEndpoint, folder: Path, payloads: list[bytes]) -> float:
    store = await StationStore.open(folder / "station.db")
    outbox = Outbox(store)
    async with store.transaction() as tx:
        for payload in payloads:
            await outbox.append(tx, record_id=json.loads(payload)["record_id"],
                                build=lambda _seq, _link, p=payload: p)
    db = await open_record_db(folder / "records.db")
    recorder = Recorder(endpoint=endpoint, store=RecordStore(db))

    async def ignore(_payload: bytes, _topic: str) -> None:
        return None

    link = Link(endpoint=endpoint, station_id=STATION, outbox=outbox, status=StatusBoard(STATION),
                on_job=ignore, ack_timeout_s=30, session_expiry_s=60,
                max_message_bytes=256 * 1024, backoff=Backoff(base=0.1, cap=1))
    tasks = [asyncio.create_task(recorder.run())]
    await recorder.connected.wait()
    start = time.perf_counter()
    tasks.append(asyncio.create_task(link.run()))
    while await outbox.depth():  # noqa: ASYNC110 (a row count, not an event)
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - start
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await db.close()
    await store.close()
    return elapsed


async def main(records: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker = LocalBroker(Path(tmp) / "broker", extra_config="allow_anonymous true\n"
                             "max_queued_messages 100000\n")
        await broker.start()
        try:
            endpoint = BrokerEndpoint(host="127.0.0.1", port=broker.port)
            payloads = [record(seq) for seq in range(1, records + 1)]
            ref_s = await reference(endpoint, payloads)
            agent_s = await agent(endpoint, Path(tmp), payloads)
        finally:
            await broker.stop()
    figures = {"records": records, "record_bytes": len(payloads[0]),
               "reference_s": round(ref_s, 3), "agent_s": round(agent_s, 3),
               "agent_records_per_s": round(records / agent_s),
               "agent_over_reference": round(agent_s / ref_s, 2)}
    for key, value in figures.items():
        print(f"{key:<24} {value}")
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    asyncio.run(main(parser.parse_args().records))
