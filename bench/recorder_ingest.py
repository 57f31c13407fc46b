"""How fast recorders store and acknowledge records, against a subscriber that only counts them.

One private mosquitto per run (``max_queued_messages`` raised, ``max_inflight_messages 0`` so each
client's Receive Maximum governs), N chained unit records of the real size (about 2 KB) from S
simulated stations in P publisher processes (paho, QoS 1). Runs:

* reference: a plain QoS 1 subscriber (aiomqtt, shared subscription) that only counts: from the
  first publish until it has counted N;
* SQLite, one recorder; PostgreSQL (a private cluster, fsync on) with one and with two recorders
  (``fixture-agent recorder`` processes): from the first publish until every station has received
  the recorder's acknowledgement of every record (stored, committed, acked);
* station backlog: N records in one station's outbox (an outage), then the link drains them into a
  SQLite recorder; the station process's RSS growth during the drain.

Ratios are against references of the same run (absolute figures on a shared machine are noise).
Targets: two recorders on PostgreSQL >= 1.6x one; a recorder >= 0.5x the counting subscriber;
backlog drained with station RSS growth < 20 MB. Each run also prints the CPU one record cost in
each role and how busy the machine was, and the ratio two recorders could reach at most with every
core busy at that cost (``postgresql_2_over_1_cpu_ceiling``): on a machine with few cores the
publishers, the broker and PostgreSQL share them with the recorders; ``..._stations_elsewhere``
leaves the publishers (the stations) out. Last line: one JSON object.

    .venv/bin/python bench/recorder_ingest.py [--records 100000] [--stations 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.sim.broker import LocalBroker  # noqa: E402
from agent.sim.postgres import LocalPostgres  # noqa: E402

PUBLISHERS = 2
BROKER_CONFIG = ("allow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages 0\n"
                 "max_queued_bytes 0\n")


def write_payloads(folder: Path, records: int, stations: int) -> list[Path]:
    """Chained records of every station, split into one file per publisher process."""
    from agent.sim.records import chain

    per_station = records // stations
    files = [folder / f"publisher-{p}.txt" for p in range(PUBLISHERS)]
    sinks = [path.open("w") for path in files]
    for n in range(stations):
        sink = sinks[n % PUBLISHERS]
        for payload in chain(f"bench-{n:03d}", per_station):
            sink.write(f"bench-{n:03d}\t{payload.decode()}\n")
    for sink in sinks:
        sink.close()
    return files


def rss_peak_kb(pid: int) -> int:
    """The peak resident set size of a process (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int, *, reaped_children: bool = False) -> float:
    """CPU seconds a process has used (all its threads; with ``reaped_children`` also its
    children that have exited, e.g. PostgreSQL backends), 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def machine_busy_s() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine since boot, every core summed."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / CLOCK_TICKS, sum(values) / CLOCK_TICKS


class CpuMeter:
    """CPU seconds of each role of a run, between :meth:`start` and :meth:`stop`."""

    def __init__(self, roles: dict[str, list[int]], server: int | None) -> None:
        self._roles = roles
        self._server = server  # a PostgreSQL postmaster: it and its backends
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        now = {role: sum(cpu_s(pid) for pid in pids) for role, pids in self._roles.items()}
        if self._server is not None:
            now["postgresql"] = (cpu_s(self._server, reaped_children=True)
                                 + sum(cpu_s(pid) for pid in children(self._server)))
        now["machine"] = machine_busy_s()[0]
        return now

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> None:
        end = self._now()
        self.used = {role: end[role] - self._start[role] for role in end}


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)


async def run_flow(folder: Path, files: list[Path], records: int, *, db: str | None,
                   recorders: int, server_pid: int | None = None) -> dict[str, Any]:
    """One run: publishers -> broker -> recorders (or the counting subscriber)."""
    print(f"run: {db or 'reference'} x{recorders}", file=sys.stderr, flush=True)
    broker = LocalBroker(folder / f"broker-{time.monotonic_ns()}", extra_config=BROKER_CONFIG)
    await broker.start()
    consumers: list[subprocess.Popen[str]] = []
    try:
        address = f"127.0.0.1:{broker.port}"
        if db is None:
            consumers.append(spawn(__file__, "--role", "counter", "--broker", address,
                                   "--records", str(records)))
        else:
            consumers += [spawn("-m", "agent", "recorder", "--db", db, "--broker", address,
                                "--client-id", f"bench-recorder-{n}") for n in range(recorders)]
        await asyncio.sleep(2.0)  # connected and subscribed (a recorder migrates first)
        publishers = [spawn(__file__, "--role", "publisher", "--broker", address, "--file",
                            str(path), "--wait-acks", "0" if db is None else "1")
                      for path in files]
        for p in publishers:  # each has read its file and connected
            assert p.stdout is not None
            await asyncio.to_thread(p.stdout.readline)
        meter = CpuMeter({"consumers": [c.pid for c in consumers],
                          "broker": [broker.pid] if broker.pid else []}, server_pid)
        meter.start()
        for p in publishers:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads((await asyncio.to_thread(p.communicate))[0] or "{}")
                   for p in [*publishers]]
        start = min(r["start"] for r in results)
        if db is None:
            assert consumers[0].stdout is not None
            end = json.loads(await asyncio.to_thread(consumers[0].stdout.readline))["end"]
            done = records
        else:
            end = max(r["end"] for r in results)
            done = sum(r["acked"] for r in results)
        meter.stop()
        peaks = [rss_peak_kb(c.pid) for c in consumers]
    finally:
        for c in consumers:
            c.terminate()
            await asyncio.to_thread(c.wait)
        await broker.stop()
    used = {**meter.used, "publishers": sum(r["cpu_s"] for r in results)}
    machine = used.pop("machine")
    return {"records": done, "seconds": round(end - start, 3),
            "per_s": round(done / (end - start)), "rss_mb": [round(k / 1024, 1) for k in peaks],
            "cpu_ms_per_record": {role: round(1000 * s / done, 3) for role, s in used.items()},
            "machine_busy_pct": round(100 * machine / (os.cpu_count() or 1) / (end - start))}


async def main(records: int, stations: int) -> None:
    figures: dict[str, Any] = {"records": records, "stations": stations}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = write_payloads(folder, records, stations)
        records = stations * (records // stations)
        figures["reference"] = await run_flow(folder, files, records, db=None, recorders=0)
        figures["sqlite_1"] = await run_flow(folder, files, records,
                                             db=str(folder / "records.db"), recorders=1)
        for n in (1, 2):
            pg = LocalPostgres(durable=True)
            await pg.start()
            try:
                figures[f"postgresql_{n}"] = await run_flow(folder, files, records, db=pg.url,
                                                            recorders=n, server_pid=pg.pid)
            finally:
                await pg.stop()
        backlog = spawn(__file__, "--role", "backlog", "--records", str(records),
                        "--folder", str(folder))
        figures["station_backlog"] = json.loads(await asyncio.to_thread(
            lambda: backlog.communicate()[0]))
    ref = figures["reference"]["per_s"]
    figures["ratios"] = {
        "postgresql_2_over_1": round(figures["postgresql_2"]["per_s"]
                                     / figures["postgresql_1"]["per_s"], 2),
        "sqlite_1_over_reference": round(figures["sqlite_1"]["per_s"] / ref, 2),
        "postgresql_1_over_reference": round(figures["postgresql_1"]["per_s"] / ref, 2),
    }
    # What two recorders could reach at best on this machine: every core busy with the CPU one
    # record cost across all roles of that run (recorders, PostgreSQL, broker, publishers).
    two = figures["postgresql_2"]
    ceiling = (os.cpu_count() or 1) * 1000 / sum(two["cpu_ms_per_record"].values())
    figures["ratios"]["postgresql_2_over_1_cpu_ceiling"] = round(
        ceiling / figures["postgresql_1"]["per_s"], 2)
    # The same with the simulated stations' CPU left out, as on a plant, where they run elsewhere.
    plant = {role: ms for role, ms in two["cpu_ms_per_record"].items() if role != "publishers"}
    figures["ratios"]["postgresql_2_over_1_cpu_ceiling_stations_elsewhere"] = round(
        (os.cpu_count() or 1) * 1000 / sum(plant.values()) / figures["postgresql_1"]["per_s"], 2)
    targets = {"postgresql_2_over_1 >= 1.6": figures["ratios"]["postgresql_2_over_1"] >= 1.6,
               "recorder_over_reference >= 0.5":
                   figures["ratios"]["sqlite_1_over_reference"] >= 0.5
                   and figures["ratios"]["postgresql_1_over_reference"] >= 0.5,
               "backlog_rss_growth_mb < 20": figures["station_backlog"]["rss_growth_mb"] < 20}
    figures["targets_met"] = targets
    for key in ("reference", "sqlite_1", "postgresql_1", "postgresql_2", "station_backlog",
                "ratios", "targets_met"):
        print(f"{key:<16} {json.dumps(figures[key])}")
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--stations", type=int, default=20)
    parser.add_argument("--role", choices=("main", "publisher", "counter", "backlog"),
                        default="main")
    parser.add_argument("--broker")
    parser.add_argument("--file", type=Path)
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--wait-acks", type=int, default=1)
    args = parser.parse_args()
    if args.role == "main":
        asyncio.run(main(args.records, args.stations))
    else:
        import recorder_ingest_roles  # bench/ is this script's folder

        recorder_ingest_roles.run(args)
