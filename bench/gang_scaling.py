"""Panel throughput: units per hour for N slots, worker processes against threads (issue 10).

A real station (``serve``, the simulated fixture, a private mosquitto) programs panels of N
virtual nRF52840s with the demo product (72 KiB of images plus a 4 KiB manufacturing partition
per unit), once with every slot in its own worker process and once with every slot on a thread of
the station's process, with the chip's timing model on (the part waits for its flash as silicon
does) and off (CPU bound). For each run: units per hour, the scaling against N x one slot of the
same kind, the station event loop's lag while the panel programs (p99 of a 10 ms ticker), and
each worker's resident memory. Then, on one slot with the timing model on, re-programming an
identical image (a board back from rework) against programming a blank part.

Targets: timing on, N slots >= 0.9 x N x one slot up to N = 8; timing off, >= 0.9 x N up to N =
the number of cores; loop lag p99 < 20 ms; re-flash / full program <= 0.25. Ratios in one run are
the figures; absolute times on a shared machine are noise. The last line is one JSON object.

    .venv/bin/python bench/gang_scaling.py [--slots 1,2,4,8] [--panels-on 3] [--panels-off 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.config import StationConfig, parse_config
from agent.demo.images import ReleaseKey, demo_job, demo_manifest, write_images
from agent.hw.programmer import ConnectOptions, Region, ValidFlag
from agent.hw.pyocd_programmer import PyOcdProgrammer
from agent.plant.publish import publish_retained
from agent.sim.broker import LocalBroker
from agent.sim.nrf52840 import place_new_board, set_board_dir, set_timing
from agent.station import rework
from agent.station.app import StationParts, build_hardware, serve
from agent.wire.mqtt import BrokerEndpoint
from agent.wire.topics import StationTopics

PINS = {"clamp_sensor": 17, "clamp_actuator": 27, "dut_power": 22, "interlock": 23,
        "lamp_pass": 5, "lamp_fail": 6, "lamp_busy": 13}
TICK_S = 0.010
KEY = ReleaseKey("bench-release")


def station(workdir: Path, port: int, *, slots: int, mode: str, timing: bool) -> StationConfig:
    """A simulated station with a panel of ``slots`` pyOCD slots."""
    raw = {
        "station": {"id": f"gang-{mode}-{'on' if timing else 'off'}-{slots}"},
        "broker": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.05,
                   "reconnect_max_s": 0.5},
        "fixture": {"backend": "sim", "pins": PINS, "clamp_settle_ms": 5, "power_settle_ms": 1,
                    "slot_workers": mode},
        "slots": [{"name": f"s{n}", "backend": "pyocd", "probe": f"sim:gang-{n}"}
                  for n in range(slots)],
        "trust": KEY.trust_section(),
        "limits": {"min_free_disk_mb": 1, "unit_timeout_s": 600},
        "simulation": {"board_dir": str(workdir / "boards"), "timing": timing},
    }
    return parse_config(raw, source="bench", base=workdir, state_dir=workdir / "state")


async def ticker(lags: list[float], running: asyncio.Event) -> None:
    """How late a 10 ms timer fires on the station's loop while ``running`` is set."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + TICK_S
        await asyncio.sleep(TICK_S)
        if running.is_set():
            lags.append(loop.time() - due)


def rss_mb(pid: int) -> float:
    """Resident memory of a process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def panel_run(workdir: Path, broker: LocalBroker, *, slots: int, mode: str, timing: bool,
                    panels: int) -> dict[str, Any]:
    """Program ``panels`` panels of ``slots`` slots; units per hour, loop lag, worker memory."""
    config = station(workdir, broker.port, slots=slots, mode=mode, timing=timing)
    hardware = await build_hardware(config)
    started: asyncio.Future[StationParts] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(config, hardware, started=started.set_result))
    lags: list[float] = []
    running = asyncio.Event()
    tick = asyncio.create_task(ticker(lags, running))
    try:
        parts = await asyncio.wait_for(asyncio.shield(started), 60)
        await ready(config, parts, broker, workdir)
        running.set()
        t0 = time.perf_counter()
        verdicts = await hardware.sim.operator.run(panels)
        elapsed = time.perf_counter() - t0
        running.clear()
        if verdicts != ["pass"] * panels:
            raise SystemExit(f"{mode} x{slots} timing={timing}: panels {verdicts}")
        memory = [rss_mb(p.pid) for p in parts.programmers.values()
                  if getattr(p, "pid", None) is not None]
    finally:
        tick.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    units = slots * panels
    return {"units": units, "seconds": round(elapsed, 2),
            "units_per_hour": round(units * 3600 / elapsed),
            "loop_lag_p99_ms": round(percentile(lags, 0.99) * 1000, 2),
            "worker_rss_mb": round(statistics.mean(memory), 1) if memory else None}


async def ready(config: StationConfig, parts: StationParts, broker: LocalBroker,
                workdir: Path) -> None:
    """Publish the signed demo set and a job, and wait until the station takes boards."""
    endpoint = BrokerEndpoint(host="127.0.0.1", port=broker.port)
    topics = StationTopics(config.station.id)
    manifest = demo_manifest(write_images(workdir / "images"), uicr_flag=True,
                             set_id="gang-1", sequence=1)
    await publish_retained(endpoint, topics.firmware_set, KEY.sign(manifest), client_id="bench")
    job = demo_job(set_id="gang-1", job_id=f"wo-{config.station.id}", station=config.station.id,
                   units=5000)
    await publish_retained(endpoint, topics.job, json.dumps(job).encode(), client_id="bench")
    async with asyncio.timeout(120):
        while not parts.status.accepting_units:  # noqa: ASYNC110 (a status field, polled)
            await asyncio.sleep(0.05)


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def reflash_ratio(workdir: Path, rounds: int) -> dict[str, Any]:
    """One slot, timing model on: a board back from rework against a blank one (medians)."""
    root = workdir / "reflash-boards"
    set_board_dir(root)
    set_timing(True)
    images = [(Region(i["name"], i["address"], i["size"]), read_image(i["url"]))
              for i in write_images(workdir / "reflash-images")]
    flag = ValidFlag(kind="uicr", address=0x10001080, value=0x600DF00D)
    full, again = [], []
    prog = PyOcdProgrammer(probe_id="sim:reflash")
    try:
        for _ in range(rounds):
            place_new_board(root, "reflash")
            full.append(await one_unit(prog, images, flag))
            again.append(await one_unit(prog, images, flag))
    finally:
        prog.shutdown()
        set_timing(None)
    ratio = statistics.median(again) / statistics.median(full)
    return {"full_program_s": round(statistics.median(full), 3),
            "reflash_s": round(statistics.median(again), 3), "reflash_over_full": round(ratio, 3)}


def read_image(url: str) -> bytes:
    """An image the demo wrote (a file:// URL)."""
    return Path(url.removeprefix("file://")).read_bytes()


async def one_unit(prog: PyOcdProgrammer, images: list[tuple[Region, bytes]],
                   flag: ValidFlag) -> float:
    """The unit cycle's programmer calls, with its rework rule (``agent.station.rework``).

    Connect, id, read the valid flag, invalidate; on a part programmed before, read each region
    and write only those that differ; read back what was written; valid flag; disconnect.
    """
    t0 = time.perf_counter()
    await prog.connect(ConnectOptions(target="nrf52840"))
    await prog.read_unique_id()
    from_rework = await rework.programmed_before(prog, flag)
    await prog.erase(Region("valid-flag", flag.address, 4))
    written = []
    for region, data in images:
        expected = hashlib.sha256(data).hexdigest()
        if from_rework and await rework.region_digest(prog, region) == expected:
            continue
        await prog.write(region, data)
        written.append((region, expected))
    for region, expected in written:
        if await rework.region_digest(prog, region) != expected:
            raise SystemExit(f"read-back mismatch in {region.name}")
    await prog.set_valid_flag(flag)
    await prog.disconnect()
    return time.perf_counter() - t0


async def bench(slot_counts: list[int], panels_on: int, panels_off: int) -> dict[str, Any]:
    """Every run, then the ratios against one slot of the same kind."""
    cores = os.cpu_count() or 1
    figures: dict[str, Any] = {"cores": cores, "slots": slot_counts}
    with tempfile.TemporaryDirectory(prefix="gang-") as tmp:
        broker = LocalBroker(Path(tmp) / "broker")
        await broker.start()
        try:
            for timing, panels in ((True, panels_on), (False, panels_off)):
                for mode in ("process", "thread"):
                    for n in slot_counts:
                        work = Path(tmp) / f"{mode}-{timing}-{n}"
                        run = await panel_run(work, broker, slots=n, mode=mode, timing=timing,
                                              panels=panels)
                        key = f"{mode}_{'on' if timing else 'off'}_{n}"
                        figures[key] = run
                        print(f"{key:>14}: {run}", flush=True)
        finally:
            await broker.stop()
        figures["reflash"] = await reflash_ratio(Path(tmp), rounds=3)
        print(f"{'reflash':>14}: {figures['reflash']}", flush=True)
    return summarise(figures, slot_counts, cores)


def summarise(figures: dict[str, Any], slot_counts: list[int], cores: int) -> dict[str, Any]:
    """Scaling = units/h of N slots over N x units/h of one slot, per mode and timing."""
    lags = []
    for mode in ("process", "thread"):
        for timing in ("on", "off"):
            one = figures[f"{mode}_{timing}_1"]["units_per_hour"]
            for n in slot_counts:
                run = figures[f"{mode}_{timing}_{n}"]
                run["scaling"] = round(run["units_per_hour"] / (n * one), 3)
                if mode == "process":
                    lags.append(run["loop_lag_p99_ms"])
    process_on = [figures[f"process_on_{n}"]["scaling"] for n in slot_counts if n <= 8]
    process_off = [figures[f"process_off_{n}"]["scaling"] for n in slot_counts if n <= cores]
    figures["targets"] = {
        "timing_on_scaling_min": min(process_on), "timing_on_met": min(process_on) >= 0.9,
        "timing_off_scaling_min": min(process_off), "timing_off_met": min(process_off) >= 0.9,
        "loop_lag_p99_max_ms": max(lags), "loop_lag_met": max(lags) < 20,
        "reflash_over_full": figures["reflash"]["reflash_over_full"],
        "reflash_met": figures["reflash"]["reflash_over_full"] <= 0.25,
    }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", default="1,2,4,8", help="slot counts (default 1,2,4,8)")
    parser.add_argument("--panels-on", type=int, default=3, help="panels per run, timing on")
    parser.add_argument("--panels-off", type=int, default=4, help="panels per run, timing off")
    args = parser.parse_args()
    counts = [int(n) for n in args.slots.split(",")]
    figures = asyncio.run(bench(counts, args.panels_on, args.panels_off))
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
