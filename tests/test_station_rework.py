"""A board back from rework: regions that already hold their image are read once, not rewritten.

The real unit cycle (``program_unit``) on the real pyOCD backend and a virtual nRF52840, with the
programmer's calls recorded: the second time a part passes through the cycle, only what differs
is written (and the per-unit manufacturing partition, which differs every time).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from agent.demo.images import demo_job, demo_manifest, write_images
from agent.firmware.manifest import FirmwareSetManifest
from agent.hw.programmer import Connection, ConnectOptions, Programmer, Region
from agent.hw.pyocd_programmer import PyOcdProgrammer
from agent.sim.nrf52840 import place_new_board, read_board_memory
from agent.station.cycle import UnitPlan, UnitRun, program_unit
from agent.wire.messages import Job
from tests.conftest import NRF_PROBE


class Recording:
    """The real programmer, with the names of the regions written."""

    def __init__(self, inner: Programmer) -> None:
        self.inner = inner
        self.written: list[str] = []

    async def connect(self, options: ConnectOptions) -> Connection:
        return await self.inner.connect(options)

    async def write(self, region: Region, data: bytes) -> None:
        self.written.append(region.name)
        await self.inner.write(region, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def plan(folder: Path, *, variant: str = "") -> UnitPlan:
    entries = write_images(folder, variant=variant)
    manifest = demo_manifest(entries, uicr_flag=True, set_id="s", sequence=1)
    fs = FirmwareSetManifest.model_validate_json(json.dumps(manifest)).as_firmware_set()
    job_json = json.dumps(demo_job(set_id="s", job_id="J", station="st", units=5))
    job = Job.model_validate_json(job_json)
    images = {e["name"]: Path(unquote(e["url"].removeprefix("file://"))).read_bytes()
              for e in entries}
    return UnitPlan(job=job, set_id="s", manifest_digest="d" * 64, station_id="st",
                    firmware_set=fs, images=images)


async def run_unit(programmer: Recording, unit_plan: UnitPlan) -> UnitRun:
    serials = iter(f"SN-{n}" for n in range(100))

    async def take_serial(slot: str, uid: str | None, digest: str) -> str | None:
        return next(serials)

    run = UnitRun(slot="a", plan=unit_plan)
    programmer.written.clear()
    try:
        await program_unit(run, programmer, take_serial=take_serial)  # type: ignore[arg-type]
    finally:
        await programmer.disconnect()
    return run


async def test_a_reworked_board_is_written_only_where_it_differs(
        boards: Path, programmer: PyOcdProgrammer, tmp_path: Path) -> None:
    place_new_board(boards, NRF_PROBE)
    recording = Recording(programmer)
    first = plan(tmp_path / "v1")
    images = ["bootloader", "application", "filesystem"]

    blank = await run_unit(recording, first)
    assert blank.passed
    assert recording.written == [*images, "manufacturing"]

    again = await run_unit(recording, first)
    assert again.passed
    assert recording.written == ["manufacturing"]
    assert all(again.images[name].verified for name in images)

    second = plan(tmp_path / "v2", variant="b")  # a new application release, same rest
    updated = await run_unit(recording, second)
    assert updated.passed
    assert recording.written == ["application", "manufacturing"]
    app = second.programmable_set().images[1]
    assert app.role == "application"
    on_part = read_board_memory(boards, NRF_PROBE, app.address, app.size)
    assert on_part == second.images[app.name]
    assert updated.images[app.name].readback_sha256 == app.sha256


async def test_a_blank_part_reads_no_image_before_writing(
        boards: Path, programmer: PyOcdProgrammer, tmp_path: Path) -> None:
    place_new_board(boards, NRF_PROBE)
    reads: list[str] = []
    recording = Recording(programmer)
    inner_read = programmer.read

    async def read(region: Region) -> bytes:
        reads.append(region.name)
        return await inner_read(region)

    recording.read = read  # type: ignore[method-assign]
    run = await run_unit(recording, plan(tmp_path))
    assert run.passed
    assert reads == ["valid-flag", "bootloader", "application", "filesystem", "manufacturing"]

