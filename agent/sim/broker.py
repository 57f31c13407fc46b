"""A private mosquitto on a free loopback port, for the demo and the tests.

It runs the system's mosquitto binary with its own configuration file in a folder of its own
(persistence there too), never touching /etc/mosquitto or port 1883.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import shutil
import signal
import socket
import subprocess
from pathlib import Path

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")


def find_mosquitto() -> str:
    """Path of the mosquitto binary, or FileNotFoundError saying how to get it."""
    found = shutil.which("mosquitto") or next(
        (p for p in MOSQUITTO_PATHS if Path(p).exists()), None)
    if found is None:
        raise FileNotFoundError("mosquitto not found: apt-get install mosquitto "
                                "(scripts/setup does it)")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalBroker:
    """mosquitto on 127.0.0.1:``port`` with the given config lines plus listener and persistence."""

    def __init__(self, workdir: Path, *, port: int | None = None,
                 extra_config: str = "allow_anonymous true\n") -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.extra_config = extra_config
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        """The configuration file this broker runs with."""
        return self.workdir / "mosquitto.conf"

    def config_text(self) -> str:
        """What the configuration file says (a subclass may run another configuration)."""
        return (f"listener {self.port} 127.0.0.1\n"
                f"persistence true\npersistence_location {self.workdir}/\n"
                f"log_dest file {self.workdir}/mosquitto.log\n"
                # started as root, mosquitto would drop to user "mosquitto", who cannot read
                # this run's private folder (ACL, certificates, log): keep the invoking user
                f"user {getpass.getuser()}\n"
                f"{self.extra_config}")

    @property
    def pid(self) -> int | None:
        """The process id of the running mosquitto, None when stopped."""
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        """Start mosquitto and wait until it accepts connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        output = self.workdir / "mosquitto.out"  # a configuration may log to stderr
        with output.open("ab") as sink:
            self._process = subprocess.Popen(  # noqa: ASYNC220 (returns at once; waits are async)
                [find_mosquitto(), "-c", str(self.config_path)],
                stdout=sink, stderr=subprocess.STDOUT)
        for _ in range(200):
            if self._process.poll() is not None:
                detail = "".join(path.read_text()[-2000:] for path in
                                 (self.workdir / "mosquitto.log", output) if path.exists())
                raise RuntimeError(f"mosquitto exited with {self._process.returncode}: {detail}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                return
            await asyncio.sleep(0.025)
        raise TimeoutError(f"mosquitto did not listen on port {self.port}")

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads its ACL and password files."""
        if self._process is not None:
            self._process.send_signal(signal.SIGHUP)

    async def stop(self) -> None:
        """Stop mosquitto (SIGTERM, then SIGKILL) and wait for it."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 5)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)
