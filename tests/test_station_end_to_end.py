"""Job in over MQTT -> units programmed on the simulated fixture -> records acknowledged."""

from __future__ import annotations

import json
from pathlib import Path

from agent.demo.images import MANUFACTURING, write_images
from agent.plant.trace import find_by_serial, missing_sequences
from agent.sim.broker import LocalBroker
from agent.sim.nrf52840.boards import read_board_memory
from agent.station import mfgdata
from tests.conftest import PlantRecorder
from tests.helpers import (
    eventually,
    job_payload,
    publish_job,
    running_station,
    start_job,
    station_config,
)

DOMAIN_FIELDS = {"serial", "chip_uid", "station", "slot", "job_id", "product", "firmware_set_id",
                 "manifest_digest", "images", "started_at", "finished_at", "stages", "outcome",
                 "routing", "failure", "agent_version", "seq", "record_id"}
IMAGE_FIELDS = {"name", "version", "sha256", "address", "size", "key_ref", "verified",
                "readback_sha256"}


async def test_job_programs_units_and_every_record_is_acknowledged(
        tmp_path: Path, broker: LocalBroker, recorder: PlantRecorder) -> None:
    config = station_config(tmp_path, broker.port)  # pyOCD on a virtual nRF52840
    units = 4
    async with running_station(config) as (parts, sim):
        await eventually(parts.link.connected.is_set, what="station link")
        await start_job(broker.port, "st-test", tmp_path, job_id="wo-1001", units=units)
        await eventually(lambda: parts.jobs.current is not None, what="job accepted")
        verdicts = await sim.operator.run(units)
        assert verdicts == ["pass"] * units
        await eventually(lambda: recorder.count("st-test"), what="records stored")
        await eventually(lambda: _outbox_empty(parts), what="all records acknowledged")
        assert parts.jobs.current is not None
        assert (parts.jobs.current.passed, parts.jobs.current.state) == (units, "complete")
        bay = sim.bays["a"]
        last_mfg = mfgdata.parse(read_board_memory(bay.board_dir, bay.probe_uid,
                                                   MANUFACTURING["address"], 4096))

    assert await recorder.count("st-test") == units
    assert await missing_sequences(recorder.db, "st-test") == []
    serials = [f"SN-{n:06d}" for n in range(1000, 1000 + units)]
    assert last_mfg["serial"] == serials[-1]
    uids = set()
    for serial in serials:
        (record,) = await find_by_serial(recorder.db, serial)
        assert record.keys() >= DOMAIN_FIELDS
        assert record["outcome"] == "pass"
        assert record["routing"] == "ship"
        assert record["job_id"] == "wo-1001"
        assert record["product"] == "sensor-node"
        assert record["valid_flag_set"]
        assert record["failure"] is None
        assert [i["name"] for i in record["images"]] == [
            "bootloader", "application", "filesystem", "manufacturing"]
        for image in record["images"]:
            assert image.keys() >= IMAGE_FIELDS
            assert image["verified"]
            assert image["readback_sha256"] == image["sha256"]
        declared = {i["name"]: i for i in write_images(tmp_path / "images")}
        for image in record["images"][:3]:
            assert image["sha256"] == declared[image["name"]]["sha256"]
            assert image["key_ref"] == declared[image["name"]]["key_ref"]
        stages = [s["stage"] for s in record["stages"]]
        assert stages == ["clamp", "power_on", "connect", "identify", "serialize", "invalidate",
                          "program", "verify", "set_valid", "disconnect", "power_off"]
        uids.add(record["chip_uid"])
    assert len(uids) == units  # a new board each time


async def _outbox_empty(parts: object) -> bool:
    return await parts.outbox.depth() == 0  # type: ignore[attr-defined]


async def test_redelivered_job_is_not_run_twice_and_counts_survive_restart(
        tmp_path: Path, broker: LocalBroker, recorder: PlantRecorder) -> None:
    config = station_config(tmp_path, broker.port)
    job = job_payload(job_id="wo-2002", station="st-test", units=3)
    async with running_station(config) as (parts, sim):
        await eventually(parts.link.connected.is_set, what="link")
        await start_job(broker.port, "st-test", tmp_path, job_id="wo-2002", units=3)
        await eventually(lambda: parts.jobs.current is not None, what="job accepted")
        await sim.operator.run(2)
    # Restart: the retained job is delivered again; the station keeps its count of 2.
    async with running_station(config) as (parts, sim):
        await eventually(parts.link.connected.is_set, what="link")
        await publish_job(broker.port, "st-test", json.dumps(job).encode())
        assert parts.jobs.current is not None
        assert parts.jobs.current.passed == 2
        assert await sim.operator.run(1) == ["pass"]
        assert parts.jobs.current.state == "complete"
        await eventually(lambda: _outbox_empty(parts), what="acks")
        assert "job wo-2002 is complete" in parts.status.blocked
    assert await recorder.count("st-test") == 3
    assert await missing_sequences(recorder.db, "st-test") == []
