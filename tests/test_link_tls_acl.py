"""The station on the shipped TLS broker, its records refused by the ACL for a while.

A station whose ACL does not let it write records gets PUBACK 0x87 (MQTT v5): it keeps the record,
says so on its status, and delivers it once the ACL is fixed. Nothing is lost on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

from agent.config import parse_config
from agent.plant.publish import publish_retained
from agent.plant.recorder import Recorder
from agent.plant.records import RecordStore, open_record_db
from agent.wire.topics import StationTopics
from tests.helpers import eventually, job_payload, running_station, signed_set, station_raw
from tests.secure_broker import make_plant

RECORDS_LINE = "pattern write fixture/v1/station/%u/records\n"


async def test_tls_identity_and_acl_refusal_keep_the_record_until_it_may_be_delivered(
        tmp_path: Path) -> None:
    plant = make_plant(tmp_path / "plant")
    acl = plant.broker.tls / "acl-stations"
    shipped = acl.read_text()
    acl.write_text(shipped.replace(RECORDS_LINE, ""))
    await plant.broker.start()
    station_tls = plant.endpoint("st-test")
    raw = station_raw(tmp_path, plant.broker.port, slots=[{"name": "a", "backend": "sim-flash"}])
    raw["broker"]["tls"] = {"ca": str(station_tls.ca), "cert": str(station_tls.cert),
                            "key": str(station_tls.key)}
    config = parse_config(raw, source="test", base=tmp_path)
    db = await open_record_db(tmp_path / "records.db")
    recorder = Recorder(endpoint=plant.endpoint("plant-recorder-1"), store=RecordStore(db),
                        client_id="plant-recorder-1")
    recorder_task = asyncio.create_task(recorder.run())
    tools = plant.endpoint("plant-tools")
    topics = StationTopics("st-test")
    try:
        async with running_station(config) as (parts, sim):
            await eventually(parts.link.connected.is_set, what="TLS link")
            await eventually(recorder.connected.is_set, what="recorder")
            await publish_retained(tools, topics.firmware_set, signed_set(tmp_path),
                                   client_id="plant-tools")
            job = job_payload(job_id="wo-tls", station="st-test", units=2)
            await publish_retained(tools, topics.job, json.dumps(job).encode(),
                                   client_id="plant-tools")
            assert await sim.operator.cycle_one() == "pass"
            await eventually(lambda: "Not authorized" in (parts.status.snapshot().link_error
                                                          or ""), what="refusal on the status")
            await asyncio.sleep(2.5)  # past the ack timeout: resent, refused again, still held
            assert await parts.outbox.depth() == 1
            assert recorder.stored == 0

            acl.write_text(shipped)
            plant.broker.reload()
            await eventually(lambda: _delivered(parts), what="delivered after the ACL fix")
            assert recorder.stored == 1
            assert parts.status.snapshot().link_error is None
    finally:
        recorder_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await recorder_task
        await db.close()
        await plant.broker.stop()


async def _delivered(parts: object) -> bool:
    return await parts.outbox.depth() == 0  # type: ignore[attr-defined]
