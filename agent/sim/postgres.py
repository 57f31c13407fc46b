"""A private PostgreSQL cluster in a temporary folder on a free loopback port (tests, benches).

Never the machine's own server: ``initdb`` makes a fresh cluster, ``postgres`` serves it on
127.0.0.1 and a socket in that folder, and :meth:`LocalPostgres.stop` removes it all. PostgreSQL
refuses to run as root, so as root both run as the unprivileged ``postgres`` user (Debian's
package creates it) and the folder belongs to that user.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from agent.sim.broker import free_port

UNPRIVILEGED = "postgres"


def find_bin(name: str) -> str:
    """A PostgreSQL program (Debian keeps them under /usr/lib/postgresql/VERSION/bin)."""
    found = shutil.which(name) or next(iter(sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise FileNotFoundError(f"{name} not found: apt-get install postgresql "
                                "(scripts/setup does it)")
    return found


class LocalPostgres:
    """``initdb`` + ``postgres`` in a folder of their own; :attr:`url` to connect."""

    def __init__(self, *, durable: bool = False) -> None:
        self.port = free_port()
        self.durable = durable  # fsync on (benchmarks); tests need no crash safety
        self.folder: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The connection URL of the ``postgres`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        return ["setpriv", f"--reuid={UNPRIVILEGED}", f"--regid={UNPRIVILEGED}",
                "--init-groups", "--", *argv]

    @property
    def pid(self) -> int | None:
        """The process id of the running postgres (the postmaster), None when stopped."""
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        """Make the cluster and start the server; returns once it accepts connections."""
        self.folder = Path(tempfile.mkdtemp(prefix="fixture-agent-pg-"))
        if os.geteuid() == 0:
            user = pwd.getpwnam(UNPRIVILEGED)
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        data = self.folder / "data"
        init = await asyncio.create_subprocess_exec(
            *self._as_owner([find_bin("initdb"), "-D", str(data), "-U", "postgres",
                             "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"]),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await init.communicate()
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {out.decode(errors='replace')[-2000:]}")
        settings = ["-c", "listen_addresses=127.0.0.1",
                    "-c", f"unix_socket_directories={self.folder}",
                    "-c", "max_connections=50", "-c", "shared_buffers=128MB"]
        if not self.durable:
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                         "-c", "full_page_writes=off"]
        log = (self.folder / "postgres.log").open("ab")
        with log:
            self._process = subprocess.Popen(  # noqa: ASYNC220 (returns at once; waits are async)
                self._as_owner([find_bin("postgres"), "-D", str(data), "-p", str(self.port),
                                *settings]), stdout=log, stderr=subprocess.STDOUT)
        for _ in range(400):
            if self._process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self._process.returncode}: "
                                   f"{(self.folder / 'postgres.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                if await self._ready():
                    return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"postgres did not listen on port {self.port}")

    async def _ready(self) -> bool:
        import psycopg

        try:
            conn = await psycopg.AsyncConnection.connect(self.url, connect_timeout=2)
        except psycopg.OperationalError:
            return False  # listening, still starting up
        await conn.close()
        return True

    async def stop(self) -> None:
        """Stop the server (fast shutdown, then kill) and remove the folder."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # "fast" shutdown: clients are cut off
            try:
                await asyncio.to_thread(process.wait, 10)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
