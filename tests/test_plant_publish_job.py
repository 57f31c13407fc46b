"""`fixture-agent plant publish-job`: a job from flags or a file reaches the station; a job the
station would refuse is refused first, with the station's own sentence, and never published."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agent.cli import main
from agent.sim.broker import LocalBroker
from agent.wire.mqtt import BrokerEndpoint, make_client
from agent.wire.topics import StationTopics
from tests.helpers import eventually, job_payload, running_station, station_config


async def publish_job(port: int, *args: str) -> int:
    return await asyncio.to_thread(main, ["plant", "publish-job", "--broker",
                                          f"127.0.0.1:{port}", *args])


async def retained_job(port: int, station: str) -> bytes | None:
    async with make_client(BrokerEndpoint(host="127.0.0.1", port=port),
                           client_id="plant-peek") as client:
        await client.subscribe(StationTopics(station).job, qos=1)
        try:
            async with asyncio.timeout(1.0):
                async for message in client.messages:
                    return message.payload if isinstance(message.payload, bytes) else None
        except TimeoutError:
            return None
    return None


async def test_a_job_from_flags_reaches_the_station(tmp_path: Path, broker: LocalBroker,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    async with running_station(station_config(tmp_path, broker.port)) as (parts, _sim):
        await eventually(parts.link.connected.is_set, what="station link")
        code = await publish_job(broker.port, "--station", "st-test", "--job-id", "wo-77",
                                 "--product", "sensor-node", "--set-id", "s-1", "--quantity",
                                 "3", "--first-serial", "500", "--serial-prefix", "SN-")
        assert code == 0
        assert "serials SN-000500..SN-000505" in capsys.readouterr().out
        await eventually(lambda: parts.jobs.current is not None, what="job accepted")
        assert parts.jobs.current is not None
        job = parts.jobs.current.job
        assert (job.job_id, job.quantity, job.serials.first, job.serials.last) == (
            "wo-77", 3, 500, 505)


async def test_a_job_file_reaches_the_station_and_clear_removes_it(
        tmp_path: Path, broker: LocalBroker) -> None:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job_payload(job_id="wo-78", station="st-test", units=2)))
    async with running_station(station_config(tmp_path, broker.port)) as (parts, _sim):
        await eventually(parts.link.connected.is_set, what="station link")
        assert await publish_job(broker.port, "--station", "st-test", "--file", str(path)) == 0
        await eventually(lambda: parts.jobs.current is not None, what="job accepted")
    assert await retained_job(broker.port, "st-test") is not None
    assert await publish_job(broker.port, "--station", "st-test", "--clear") == 0
    assert await retained_job(broker.port, "st-test") is None


@pytest.mark.parametrize(("change", "says"), [
    ({"quantity": 99}, "job refused (invalid): quantity 99 exceeds the 15 serials of the range\n"),
    ({"product": "no spaces allowed"}, "product: String should match pattern"),
    ({"station": "st-other"}, "it names station st-other, not st-test"),
])
async def test_a_job_the_station_would_refuse_is_refused_and_not_published(
        tmp_path: Path, broker: LocalBroker, capsys: pytest.CaptureFixture[str],
        change: dict[str, object], says: str) -> None:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job_payload(job_id="wo-79", station="st-test", units=2) | change))
    assert await publish_job(broker.port, "--station", "st-test", "--file", str(path)) == 1
    assert says in capsys.readouterr().err
    assert await retained_job(broker.port, "st-test") is None


async def test_incomplete_flags_say_which_are_missing(broker: LocalBroker,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert await publish_job(broker.port, "--station", "st-test", "--job-id", "wo-80") == 1
    assert "--product, --set-id, --quantity, --first-serial" in capsys.readouterr().err
