"""The processes of bench/recorder_ingest.py: publishers (stations), the counting subscriber,
and the station whose outbox backlog drains after an outage."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from agent.wire.topics import StationTopics


def _host_port(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


def publisher(args: argparse.Namespace) -> None:
    """Publish every record of the file at QoS 1; wait for the recorders' acks (or PUBACKs)."""
    lines = [line.rstrip("\n").split("\t", 1) for line in args.file.open()]
    stations = sorted({station for station, _ in lines})
    ids = {json.loads(payload)["record_id"] for _, payload in lines}
    acked: set[str] = set()
    done = threading.Event()

    def on_message(_client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        acked.update(set(json.loads(message.payload)["record_ids"]) & ids)
        if len(acked) == len(ids):
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=args.file.stem,
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.on_message = on_message
    client.connect(*_host_port(args.broker))
    client.loop_start()
    for station in stations:
        client.subscribe(StationTopics(station).acks, qos=1)
    time.sleep(0.5)
    print("ready", flush=True)
    sys.stdin.readline()
    start, cpu_start = time.time(), time.process_time()
    infos = [client.publish(StationTopics(station).records, payload.encode(), qos=1)
             for station, payload in lines]
    for info in infos:
        info.wait_for_publish(600)
    if args.wait_acks:
        done.wait(600)
    end, cpu_end = time.time(), time.process_time()
    client.loop_stop()
    print(json.dumps({"start": start, "end": end, "acked": len(acked), "sent": len(lines),
                      "cpu_s": cpu_end - cpu_start}))


async def counter(args: argparse.Namespace) -> None:
    """A plain QoS 1 subscriber (automatic PUBACKs) that only counts."""
    from agent.wire.mqtt import BrokerEndpoint, make_client
    from agent.wire.topics import shared_records

    host, port = _host_port(args.broker)
    count = 0
    async with make_client(BrokerEndpoint(host=host, port=port), client_id="bench-counter",
                           receive_maximum=1000) as client:
        await client.subscribe(shared_records("bench"), qos=1)
        async for _ in client.messages:
            count += 1
            if count == args.records:
                print(json.dumps({"end": time.time()}), flush=True)
                await asyncio.sleep(3600)


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def backlog(args: argparse.Namespace) -> None:
    """N records wait in the outbox (the broker was away); then the link drains them."""
    from agent.sim.broker import LocalBroker
    from agent.sim.records import fill_outbox
    from agent.station.link import Link
    from agent.station.outbox import Outbox
    from agent.station.status import StatusBoard
    from agent.station.store import StationStore
    from agent.wire.mqtt import Backoff, BrokerEndpoint

    folder: Path = args.folder / "backlog"
    store = await StationStore.open(folder / "station.db")
    outbox = Outbox(store)
    await fill_outbox(store, outbox, "bench-station", args.records)
    broker = LocalBroker(folder / "broker", extra_config="allow_anonymous true\n"
                         "max_queued_messages 1000000\nmax_inflight_messages 0\n")
    await broker.start()
    endpoint = BrokerEndpoint(host="127.0.0.1", port=broker.port)
    # the recorder runs in a process of its own: only the station's memory is measured here
    recorder = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "recorder", "--db", str(folder / "records.db"),
        "--broker", f"127.0.0.1:{broker.port}", "--client-id", "bench-recorder")
    await asyncio.sleep(2.0)

    async def ignore(_payload: bytes, _topic: str) -> None:
        return None

    link = Link(endpoint=endpoint, station_id="bench-station", outbox=outbox,
                status=StatusBoard("bench-station"), on_job=ignore, ack_timeout_s=60,
                session_expiry_s=600, max_message_bytes=256 * 1024,
                backoff=Backoff(base=0.1, cap=1))
    before = _rss_kb()
    peak = before
    start = time.perf_counter()
    task = asyncio.create_task(link.run())
    while await outbox.depth():
        peak = max(peak, _rss_kb())
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - start
    peak = max(peak, _rss_kb())
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    recorder.terminate()
    await recorder.wait()
    await broker.stop()
    await store.close()
    print(json.dumps({"records": args.records, "drain_s": round(elapsed, 2),
                      "per_s": round(args.records / elapsed),
                      "rss_before_mb": round(before / 1024, 1),
                      "rss_growth_mb": round((peak - before) / 1024, 1)}))


def run(args: argparse.Namespace) -> None:
    """Run the role the command line names."""
    if args.role == "publisher":
        publisher(args)
    elif args.role == "counter":
        asyncio.run(counter(args))
    else:
        asyncio.run(backlog(args))
