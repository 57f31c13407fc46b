"""`fixture-agent run` as a newcomer runs it: it says what it waits for, prints each unit, stops
after the simulated operator's units, keeps its state out of the configuration's folder, and a
clean stop leaves the station `offline` in its retained status."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from agent.sim.broker import LocalBroker
from agent.wire.mqtt import BrokerEndpoint, make_client
from agent.wire.topics import StationTopics
from tests.conftest import PlantRecorder
from tests.helpers import (
    RELEASE,
    eventually,
    job_payload,
    publish,
    publish_job,
    running_station,
    signed_set,
    station_config,
)

ROOT = Path(__file__).resolve().parent.parent


def trust_entry() -> str:
    key = RELEASE.trust_section()["keys"][0]
    return (f'[[trust.keys]]\nkey_id = "{key["key_id"]}"\nalg = "ed25519"\n'
            f'public_key_pem = """\n{key["public_key_pem"].strip()}\n"""\n')


async def test_run_says_what_it_waits_for_prints_each_unit_and_stops_after_the_operator(
        tmp_path: Path, broker: LocalBroker, recorder: PlantRecorder) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    config = config_dir / "station.toml"
    demo = (ROOT / "config" / "demo.toml").read_text()
    config.write_text(demo.replace("port = 1883", f"port = {broker.port}") + trust_entry())
    station = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "run", str(config), "--state-dir", str(tmp_path / "state"),
        "--operator-units", "2", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert station.stdout is not None
    lines: list[str] = []

    async def said(text: str) -> bool:
        while not any(text in line for line in lines):
            line = (await station.stdout.readline()).decode()  # type: ignore[union-attr]
            if not line:
                _, err = await station.communicate()
                raise AssertionError(f"station ended before saying {text!r}: {lines} {err!r}")
            lines.append(line)
        return True

    await asyncio.wait_for(said("waiting: no job"), 30)
    await publish(broker.port, StationTopics("demo-st01").firmware_set, signed_set(tmp_path,
                                                                                   uicr_flag=True))
    await publish_job(broker.port, "demo-st01",
                      job_payload(job_id="wo-run-1", station="demo-st01", units=2))
    out, err = await asyncio.wait_for(station.communicate(), 120)  # it stops by itself
    lines += out.decode().splitlines(keepends=True)
    assert station.returncode == 0, (lines, err.decode()[-3000:])
    units = [line for line in lines if " unit slot a serial " in line]
    assert len(units) == 2, lines
    assert all(": PASS in " in line for line in units)
    assert "serial SN-001000" in units[0]
    assert any("simulated operator: 2 units done; every record acknowledged" in line
               for line in lines)
    assert "Traceback" not in err.decode()
    assert sorted(p.name for p in config_dir.iterdir()) == ["station.toml"]  # no state here
    assert (tmp_path / "state" / "station.db").exists()
    assert await recorder.count("demo-st01") == 2


async def test_a_clean_stop_leaves_the_station_offline_in_its_retained_status(
        tmp_path: Path, broker: LocalBroker) -> None:
    config = station_config(tmp_path, broker.port)
    async with running_station(config) as (parts, _sim):
        await eventually(parts.link.connected.is_set, what="station link")
    seen: list[dict[str, object]] = []
    async with make_client(BrokerEndpoint(host="127.0.0.1", port=broker.port),
                           client_id="plant-watch") as client:
        await client.subscribe(StationTopics("st-test").status, qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                seen.append(json.loads(message.payload))
                break
    (status,) = seen
    assert status["state"] == "offline"
    assert status["accepting_units"] is False
    assert status["at"] is not None  # a stop it reported itself, not the bare last will
