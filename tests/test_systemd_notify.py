"""The systemd notifier never blocks the station's event loop, even when no one reads."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from agent.station.systemd import Notifier


def test_a_notify_socket_no_one_reads_never_blocks_the_sender(tmp_path: Path) -> None:
    address = tmp_path / "notify.sock"
    unread = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    unread.bind(str(address))
    notifier = Notifier({"NOTIFY_SOCKET": str(address), "WATCHDOG_USEC": "200000"})
    sent = threading.Event()

    def ping() -> None:
        for _ in range(5000):  # far more than the socket's queue holds
            notifier.send("WATCHDOG=1")
        sent.set()

    sender = threading.Thread(target=ping, daemon=True)
    sender.start()
    try:
        assert sent.wait(30), "the notifier blocked on a full notify socket"
        assert unread.recv(64) == b"WATCHDOG=1"  # the first ones did arrive
    finally:
        unread.close()
