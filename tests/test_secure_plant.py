"""A station, the recorder and the plant tools end to end through the shipped secure broker.

Each runs with its own certificate from the PKI tool and only its role's rights: the tools
(plant-tools) publish a signed set to the station's group and a job, the station (st-a, group
line-a) programs units, the recorder (plant-recorder-1, shared subscription) stores and
acknowledges the records, and rollout-status reads the station's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import parse_config
from agent.plant.publish import publish_retained
from agent.plant.recorder import Recorder
from agent.plant.records import RecordStore, open_record_db
from agent.wire.mqtt import BrokerEndpoint, make_client
from agent.wire.topics import StationTopics, group_firmware_set
from tests.helpers import RELEASE, eventually, job_payload, running_station, signed_set, station_raw
from tests.secure_broker import SecurePlant, secure_plant


@contextlib.asynccontextmanager
async def recording(endpoint: BrokerEndpoint, db_path: Path) -> AsyncIterator[Recorder]:
    """The plant's recorder with ``endpoint``'s identity, until the block ends."""
    db = await open_record_db(db_path)
    recorder = Recorder(endpoint=endpoint, store=RecordStore(db), client_id="plant-recorder-1")
    task = asyncio.create_task(recorder.run())
    try:
        yield recorder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await db.close()


def tool_options(plant: SecurePlant, name: str) -> list[str]:
    """--broker and TLS options of a plant tool running as ``name``."""
    endpoint = plant.endpoint(name)
    return ["--broker", f"mqtts://127.0.0.1:{endpoint.port}", "--ca", str(endpoint.ca),
            "--cert", str(endpoint.cert), "--key", str(endpoint.key)]


def station_config(plant: SecurePlant, workdir: Path) -> object:
    """Station st-a of group line-a on the stations' listener, with its certificate."""
    tls = plant.endpoint("st-a")
    raw = station_raw(workdir, plant.broker.port, station_id="st-a",
                      slots=[{"name": "a", "backend": "sim-flash"}])
    raw["broker"].update(group="line-a", tls={"ca": str(tls.ca), "cert": str(tls.cert),
                                              "key": str(tls.key)})
    return parse_config(raw, source="test", base=workdir)


def write_release_files(workdir: Path) -> tuple[Path, Path, Path]:
    """The signed set, a trust store naming its key, and a job for st-a."""
    signed, trust, job = workdir / "set.json", workdir / "trust.toml", workdir / "job.json"
    signed.write_bytes(signed_set(workdir))
    key = RELEASE.trust_section()["keys"][0]
    trust.write_text(f'[[trust.keys]]\nkey_id = "{key["key_id"]}"\nalg = "ed25519"\n'
                     f'public_key_pem = """{key["public_key_pem"]}"""\n')
    job.write_text(json.dumps(job_payload(job_id="wo-secure", station="st-a", units=2)))
    return signed, trust, job


async def test_station_recorder_and_tools_through_the_shipped_broker(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    signed, trust, job = write_release_files(tmp_path)
    async with secure_plant(tmp_path / "plant") as plant:
        tools = tool_options(plant, "plant-tools")
        assert await asyncio.to_thread(main, [
            "plant", "publish-set", str(signed), "--group", "line-a", "--trust-store",
            str(trust), *tools]) == 0, capsys.readouterr().err
        assert await asyncio.to_thread(main, [
            "plant", "publish-job", "--station", "st-a", "--file", str(job), *tools]) == 0
        config = station_config(plant, tmp_path)
        async with recording(plant.endpoint("plant-recorder-1"), tmp_path / "records.db") as rec, \
                running_station(config) as (parts, sim):  # type: ignore[arg-type]
            assert [await sim.operator.cycle_one() for _ in range(2)] == ["pass", "pass"]
            await eventually(lambda: _acknowledged(parts), what="records acknowledged")
            assert rec.stored == 2
            capsys.readouterr()
            assert await asyncio.to_thread(main, ["plant", "rollout-status", *tools]) == 0
    out = capsys.readouterr().out
    assert "st-a" in out
    assert "sensor-node-2026.11" in out
    assert " active " in out


async def _acknowledged(parts: object) -> bool:
    return await parts.outbox.depth() == 0  # type: ignore[attr-defined]


async def test_retained_jobs_and_group_sets_survive_a_broker_restart(tmp_path: Path) -> None:
    async with secure_plant(tmp_path) as plant:
        tools = plant.endpoint("plant-tools")
        await publish_retained(tools, StationTopics("st-a").job, b"job", client_id="x")
        await publish_retained(tools, group_firmware_set("line-a"), b"set", client_id="x")
        await plant.broker.stop()
        await plant.broker.start()  # from its persistence file
        async with make_client(plant.endpoint("st-a"), client_id="st-a") as station:
            await station.subscribe(StationTopics("st-a").job, qos=1)
            await station.subscribe(group_firmware_set("line-a"), qos=1)
            payloads = set()
            async with asyncio.timeout(10):
                async for message in station.messages:
                    payloads.add(message.payload)
                    if len(payloads) == 2:
                        break
    assert payloads == {b"job", b"set"}
