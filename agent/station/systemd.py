"""sd_notify for Type=notify services: READY, WATCHDOG, STOPPING, STATUS.

Written here rather than taken from a package: the protocol is one datagram on the socket named by
$NOTIFY_SOCKET, and the maintained binding (python-systemd) needs libsystemd headers to build, which
a Pi image or CI machine may not have. Without $NOTIFY_SOCKET every call is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)


class Notifier:
    """Talks to systemd's notify socket, if the service manager gave us one."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace socket
            address = "\0" + address[1:]
        self._address = address or None
        self._warned = False
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_interval_s = int(usec) / 1_000_000 if usec.isdigit() and mine else None

    def send(self, state: str) -> None:
        """Send one notification (e.g. ``READY=1``); silently nothing outside systemd.

        Best effort, as sd_notify(3) is: a socket that has gone away is logged once and never
        stops the service (a raise here once kept a stopping station from closing its database).
        It never blocks either: this runs on the event loop, and a manager that stops reading
        fills the socket's queue (a blocking send once froze a station for 20 s mid-unit).
        """
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.connect(self._address)
                sock.send(state.encode())
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("systemd notification %s not delivered: %s", state, exc)

    async def watchdog(self, healthy: Callable[[], bool]) -> None:
        """Ping the watchdog at half its interval while ``healthy()``; a stalled loop stops it."""
        if self.watchdog_interval_s is None:
            return
        while True:
            await asyncio.sleep(self.watchdog_interval_s / 2)
            if healthy():
                self.send("WATCHDOG=1")
