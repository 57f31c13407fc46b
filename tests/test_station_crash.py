"""kill -9 in the middle of a run, restart: no record lost, no unit counted twice, no seq gap.

The station runs as a real `fixture-agent run` process (simulated fixture, operator inside), as
under systemd; the test also listens on a NOTIFY_SOCKET for READY, WATCHDOG and STOPPING.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import sys
from pathlib import Path

from agent.plant.trace import missing_sequences
from agent.sim.broker import LocalBroker
from tests.conftest import PlantRecorder
from tests.helpers import eventually, start_job, write_station_toml


async def start_station(config: Path, notify: Path, units: int) -> asyncio.subprocess.Process:
    env = dict(os.environ, NOTIFY_SOCKET=str(notify), WATCHDOG_USEC="200000")
    env.pop("WATCHDOG_PID", None)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "run", str(config), "--operator-units", str(units),
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


class NotifySocket:
    """The service manager's end of NOTIFY_SOCKET, drained as it arrives, as systemd does.

    Read only at the end, the socket's queue (net.unix.max_dgram_qlen, 10 here) filled with
    watchdog pings, and the station's non-blocking sends dropped its STOPPING=1.
    """

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self._seen: list[str] = []
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._drain)

    def _drain(self) -> None:
        while True:
            try:
                self._seen.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return

    def take(self) -> list[str]:
        """What arrived since the last take."""
        self._drain()
        seen, self._seen = self._seen, []
        return seen

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


async def test_sigkill_mid_run_loses_nothing_and_counts_nothing_twice(
        tmp_path: Path, broker: LocalBroker, recorder: PlantRecorder) -> None:
    config = tmp_path / "station.toml"
    write_station_toml(config, tmp_path, broker.port, station_id="st-crash")
    notify_path = tmp_path / "notify.sock"
    notify = NotifySocket(notify_path)
    await start_job(broker.port, "st-crash", tmp_path, job_id="wo-7007", units=40)

    first = await start_station(config, notify_path, units=40)
    await eventually(lambda: recorder.count("st-crash"), what="first records")
    await eventually(lambda: _at_least(recorder, 4), what="a few records")
    first.send_signal(signal.SIGKILL)
    await first.wait()
    before = notify.take()
    assert "READY=1" in before
    assert "WATCHDOG=1" in before

    second = await start_station(config, notify_path, units=3)
    await eventually(lambda: _station_settled(tmp_path, recorder), timeout=30,
                     what="restart's units recorded and acknowledged")
    second.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(second.wait(), 15) == 0
    after = notify.take()
    notify.close()
    assert "READY=1" in after
    assert "STOPPING=1" in after

    db = sqlite3.connect(tmp_path / "station" / "station.db")
    passed, failed, next_serial = db.execute(
        "SELECT passed, failed, next_serial FROM jobs WHERE job_id = 'wo-7007'").fetchone()
    assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM units_in_progress").fetchone()[0] == 0
    async with recorder.db.execute("SELECT payload FROM records") as cursor:
        records = [json.loads(row[0]) for row in await cursor.fetchall()]
    outcomes = [r["outcome"] for r in records]
    assert (outcomes.count("pass"), outcomes.count("fail")) == (passed, failed)
    serials = [r["serial"] for r in records if r["serial"]]
    assert len(serials) == len(set(serials))  # no serial in two records
    assert len(serials) == next_serial - 1000  # every serial handed out has its record
    assert await missing_sequences(recorder.db, "st-crash") == []
    for record in records:
        if record["outcome"] == "fail":  # only the unit the kill interrupted may fail
            assert record["failure"]["code"] == "station_restart"
            assert record["aborted"]


async def _at_least(recorder: PlantRecorder, count: int) -> bool:
    return await recorder.count("st-crash") >= count


async def _station_settled(workdir: Path, recorder: PlantRecorder) -> bool:
    db = sqlite3.connect(workdir / "station" / "station.db")
    try:
        depth = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        last = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()[0]
    finally:
        db.close()
    return depth == 0 and await recorder.count("st-crash") == last and last >= 7
