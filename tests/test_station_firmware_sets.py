"""Signed firmware sets through the station: refusals, activation between units, rollback."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.demo.images import ReleaseKey, demo_manifest, write_images
from agent.plant.trace import find_by_serial
from agent.sim.broker import LocalBroker
from agent.wire.topics import StationTopics
from tests.conftest import PlantRecorder
from tests.helpers import (
    RELEASE,
    SET_ID,
    eventually,
    job_payload,
    publish,
    publish_job,
    running_station,
    signed_set,
    station_config,
)

TOPICS = StationTopics("st-test")


def _iso(moment: datetime) -> str:
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


async def test_bad_sets_are_refused_with_their_reason_and_nothing_is_programmed(
        tmp_path: Path, broker: LocalBroker, recorder: PlantRecorder,
        rejects: list[dict[str, Any]]) -> None:
    images = write_images(tmp_path / "images")
    manifest = demo_manifest(images, uicr_flag=False, set_id=SET_ID, sequence=7)
    good = RELEASE.sign(manifest)
    tampered = good.replace(b'"3.8.0"', b'"3.8.1"')
    assert tampered != good
    now = datetime.now(UTC)
    lying = json.loads(json.dumps(manifest))
    lying["set_id"] = "sensor-node-lying"
    lying["sequence"] = 9
    lying["images"][1]["sha256"] = lying["images"][0]["sha256"]  # the hash of another image
    cases = [
        ("unsigned", json.dumps(manifest).encode(), "unsigned"),
        ("another key", ReleaseKey("intruder").sign(manifest), "unknown_key"),
        ("one byte changed", tampered, "bad_signature"),
        ("expired", RELEASE.sign({**manifest, "set_id": "old-x", "sequence": 8,
                                  "not_before": _iso(now - timedelta(days=9)),
                                  "expires": _iso(now - timedelta(days=1))}), "expired"),
    ]
    config = station_config(tmp_path, broker.port)
    async with running_station(config) as (parts, sim):
        await eventually(parts.link.connected.is_set, what="link")
        for case, payload, _ in cases:
            before = len(rejects)
            await publish(broker.port, TOPICS.firmware_set, payload)
            await eventually(lambda n=before: len(rejects) > n, what=case)
        await publish(broker.port, TOPICS.firmware_set, good)
        await eventually(lambda: parts.rollout.staged(SET_ID), what="good set staged")
        older = RELEASE.sign({**manifest, "set_id": "sensor-node-2026.10", "sequence": 6})
        await publish(broker.port, TOPICS.firmware_set, older)
        await eventually(lambda: len(rejects) > len(cases), what="rollback refusal")
        # A validly signed set whose image hash belongs to another image never gets staged;
        # the job naming it waits and says why, and a clamped board is not even powered.
        await publish(broker.port, TOPICS.firmware_set, RELEASE.sign(lying))
        await publish_job(broker.port, "st-test", job_payload(
            job_id="wo-8008", station="st-test", units=1, set_id="sensor-node-lying"))
        await eventually(lambda: any("image_from_other_set" in b for b in parts.status.blocked),
                         what="job waiting on the lying set")
        sim.bays["a"].place_new_board()
        sim.operator.close_lid()
        await asyncio.sleep(0.3)
        assert not sim.operator.dut_powered()
        assert sim.operator.lamp() == "off"
        rollout = parts.status.snapshot().rollout
        assert rollout is not None
        assert rollout["active"] == {}
    codes = [r["code"] for r in rejects]
    assert codes == [code for _, _, code in cases] + ["rollback"]
    assert await recorder.count() == 0


async def test_activation_waits_for_the_unit_in_progress_and_rollback_returns(
        tmp_path: Path, broker: LocalBroker, recorder: PlantRecorder) -> None:
    config = station_config(tmp_path, broker.port,
                            slots=[{"name": "a", "backend": "sim-flash", "op_delay_ms": 20}])
    async with running_station(config) as (parts, sim):
        operator = sim.operator
        await eventually(parts.link.connected.is_set, what="link")
        await publish(broker.port, TOPICS.firmware_set, signed_set(tmp_path))
        await publish_job(broker.port, "st-test",
                          job_payload(job_id="wo-a", station="st-test", units=5))
        assert await operator.cycle_one() == "pass"

        unit = asyncio.create_task(operator.cycle_one())
        await eventually(operator.dut_powered, what="unit in progress")
        newer = signed_set(tmp_path, set_id="sensor-node-2026.12", sequence=8, variant="b",
                           activation={"mode": "immediate"})
        await publish(broker.port, TOPICS.firmware_set, newer)
        await eventually(lambda: parts.rollout.staged("sensor-node-2026.12"), what="staged")
        assert operator.dut_powered()  # staged mid-unit, not activated
        assert parts.rollout.active_set("sensor-node").set_id == SET_ID
        assert await unit == "pass"
        await eventually(lambda: parts.rollout.active_set("sensor-node").set_id
                         == "sensor-node-2026.12", what="activated after the unit")
        await eventually(lambda: any("waits for firmware set" in b
                                     for b in parts.status.blocked), what="old job waits")

        await publish_job(broker.port, "st-test", job_payload(
            job_id="wo-b", station="st-test", units=1, set_id="sensor-node-2026.12"))
        assert await operator.cycle_one() == "pass"

        await publish(broker.port, TOPICS.command,
                      {"schema": "fixture-agent/command@1", "command": "rollback"})
        await eventually(lambda: parts.rollout.active_set("sensor-node").set_id == SET_ID,
                         what="rolled back")
        await publish_job(broker.port, "st-test", job_payload(
            job_id="wo-c", station="st-test", units=1, set_id=SET_ID))
        assert await operator.cycle_one() == "pass"
        await eventually(lambda: recorder.has(4), what="records")
    sets = [(await find_by_serial(recorder.db, f"SN-{n:06d}")) for n in (1000, 1001)]
    assert [r[0]["firmware_set_id"] for r in sets] == [SET_ID, SET_ID]
    async with recorder.db.execute("SELECT payload FROM records ORDER BY seq") as cursor:
        records = [json.loads(row[0]) for row in await cursor.fetchall()]
    assert [r["firmware_set_id"] for r in records] == [
        SET_ID, SET_ID, "sensor-node-2026.12", SET_ID]
    app = [next(i for i in r["images"] if i["name"] == "application") for r in records]
    assert app[2]["version"] == "3.8.0+b"
    assert app[3]["version"] == "3.8.0"
    assert app[2]["sha256"] != app[3]["sha256"]
