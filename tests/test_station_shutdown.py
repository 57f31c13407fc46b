"""A clean stop is clean: SIGTERM ends the service with exit 0, whatever else went away first."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

from agent.sim.broker import LocalBroker
from agent.station.systemd import Notifier
from tests.helpers import eventually, write_station_toml


def test_a_vanished_notify_socket_is_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.close()  # systemd went away (or the socket file stayed behind)
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    notifier.send("STOPPING=1")  # must not raise: notifications are best effort


async def test_sigterm_exits_zero_even_when_the_notify_socket_has_gone(
        tmp_path: Path, broker: LocalBroker) -> None:
    config = tmp_path / "station.toml"
    write_station_toml(config, tmp_path, broker.port, station_id="st-stop")
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.setblocking(False)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "run", str(config),
        env=dict(os.environ, NOTIFY_SOCKET=str(notify_path)),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    seen: list[bytes] = []

    def ready() -> bool:
        with contextlib.suppress(BlockingIOError):
            seen.append(notify.recv(4096))
        return b"READY=1" in seen

    await eventually(ready, what="READY=1")
    notify.close()
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 30) == 0
    assert process.stderr is not None
    assert b"Traceback" not in await process.stderr.read()
