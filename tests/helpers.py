"""Shared building blocks of the station tests: configs, a running station, jobs, waiting."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from agent.config import StationConfig, parse_config
from agent.demo.images import ReleaseKey, demo_job, demo_manifest, write_images
from agent.plant.publish import publish_retained
from agent.station.app import StationParts, build_hardware, serve
from agent.wire.messages import UnitRecord
from agent.wire.mqtt import BrokerEndpoint
from agent.wire.topics import StationTopics

RELEASE = ReleaseKey("test-release")  # the plant's signing key for the whole test session
SET_ID = "sensor-node-2026.11"
PINS = {"clamp_sensor": 17, "clamp_actuator": 27, "dut_power": 22, "interlock": 23,
        "lamp_pass": 5, "lamp_fail": 6, "lamp_busy": 13}


def station_raw(workdir: Path, port: int, *, station_id: str = "st-test",
                slots: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A station configuration tree for a simulated fixture."""
    return {
        "station": {"id": station_id},
        "broker": {"host": "127.0.0.1", "port": port, "keepalive_s": 5,
                   "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
        "fixture": {"backend": "sim", "pins": dict(PINS), "clamp_settle_ms": 5,
                    "power_settle_ms": 1},
        "slots": slots or [{"name": "a", "backend": "pyocd", "probe": f"sim:{station_id}-a"}],
        "storage": {"dir": str(workdir / "station")},
        "trust": RELEASE.trust_section(),
        "limits": {"record_ack_timeout_s": 2, "min_free_disk_mb": 1},
        "simulation": {"board_dir": str(workdir / "boards")},
    }


def station_config(workdir: Path, port: int, **kwargs: Any) -> StationConfig:
    """A validated station configuration for a simulated fixture."""
    return parse_config(station_raw(workdir, port, **kwargs), source="test", base=workdir)


def job_payload(*, job_id: str, station: str, units: int, set_id: str = SET_ID,
                **changes: Any) -> dict[str, Any]:
    """A demo job naming ``set_id``, with top-level fields changed."""
    job = demo_job(set_id=set_id, job_id=job_id, station=station, units=units)
    job.update(changes)
    return job


def signed_set(workdir: Path, *, set_id: str = SET_ID, sequence: int = 7, variant: str = "",
               uicr_flag: bool = False, **manifest_changes: Any) -> bytes:
    """The demo product's set (images written under ``workdir``), signed by RELEASE."""
    images = write_images(workdir / f"images{variant}", variant=variant)
    manifest = demo_manifest(images, uicr_flag=uicr_flag, set_id=set_id, sequence=sequence)
    manifest.update(manifest_changes)
    return RELEASE.sign(manifest)


async def publish(port: int, topic: str, payload: bytes | dict[str, Any]) -> None:
    """Publish retained as the plant does."""
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    await publish_retained(BrokerEndpoint(host="127.0.0.1", port=port), topic, raw,
                           client_id="plant-test")


async def publish_job(port: int, station: str, payload: bytes | dict[str, Any]) -> None:
    """Publish a retained job for ``station``."""
    await publish(port, StationTopics(station).job, payload)


async def start_job(port: int, station: str, workdir: Path, *, job_id: str, units: int) -> None:
    """Publish the signed demo set and a job naming it."""
    await publish(port, StationTopics(station).firmware_set, signed_set(workdir))
    await publish_job(port, station, job_payload(job_id=job_id, station=station, units=units))


@contextlib.asynccontextmanager
async def running_station(config: StationConfig) -> AsyncIterator[tuple[StationParts, Any]]:
    """Run a station on its simulated fixture; yields its parts and the simulated devices."""
    hardware = await build_hardware(config)
    started: asyncio.Future[StationParts] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(config, hardware, started=started.set_result))
    try:
        parts = await asyncio.wait_for(asyncio.shield(started), 10)
        yield parts, hardware.sim
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def taking_boards(parts: StationParts, port: int, workdir: Path, *, job_id: str,
                        units: int, station: str = "st-test") -> list[UnitRecord]:
    """Link up, the signed demo set and a job published, the station taking boards; returns the
    list every record the station stores is appended to."""
    await eventually(parts.link.connected.is_set, what="station link")
    await start_job(port, station, workdir, job_id=job_id, units=units)
    await eventually(lambda: parts.status.accepting_units, timeout=120,
                     what="the station taking boards")
    records: list[UnitRecord] = []
    parts.station.record_listeners.append(records.append)
    return records


async def eventually(predicate: Callable[[], Any], *, timeout: float = 20.0,
                     what: str = "condition") -> None:
    """Wait until ``await predicate()`` (or ``predicate()``) is truthy, else fail saying what."""
    async with asyncio.timeout(timeout):
        while True:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def write_station_toml(path: Path, workdir: Path, port: int, *, station_id: str,
                       op_delay_ms: int = 15, slots_toml: str | None = None) -> None:
    """A station configuration file for a real `fixture-agent run` process.

    One sim-flash slot unless ``slots_toml`` gives the ``[[slots]]`` tables; simulated boards
    live in ``workdir/boards``.
    """
    pem = RELEASE.trust_section()["keys"][0]["public_key_pem"]
    if slots_toml is None:
        slots_toml = f'[[slots]]\nname = "a"\nbackend = "sim-flash"\nop_delay_ms = {op_delay_ms}\n'
    path.write_text(f"""
[station]
id = "{station_id}"
[broker]
host = "127.0.0.1"
port = {port}
reconnect_min_s = 0.05
reconnect_max_s = 0.5
[fixture]
backend = "sim"
clamp_settle_ms = 5
power_settle_ms = 1
[fixture.pins]
clamp_sensor = 17
clamp_actuator = 27
dut_power = 22
interlock = 23
lamp_pass = 5
lamp_fail = 6
lamp_busy = 13
{slots_toml}
[storage]
dir = "{workdir}/station"
[simulation]
board_dir = "{workdir}/boards"
[trust]
keys = [{{ key_id = "{RELEASE.key_id}", alg = "ed25519", public_key_pem = '''{pem}''' }}]
[limits]
record_ack_timeout_s = 1
min_free_disk_mb = 1
""")
