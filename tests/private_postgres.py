"""A private PostgreSQL cluster for the signer store's tests: initdb in a temporary folder,
``postgres`` on a free loopback port, as the unprivileged ``postgres`` user when run as root
(PostgreSQL refuses root). Never the machine's own server.

(Issue 11's branch brings a fuller one for the recorder; once both are merged, one is enough.)
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from agent.sim.broker import free_port


def _bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise FileNotFoundError(f"{name} not found: bash scripts/setup installs postgresql")
    return found


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *argv]


@contextlib.contextmanager
def private_postgres() -> Iterator[str]:
    """Yields the URL of the ``postgres`` database of a fresh cluster; removes it after."""
    folder = Path(tempfile.mkdtemp(prefix="signer-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
    data, port = folder / "data", free_port()
    subprocess.run(_as_postgres([_bin("initdb"), "-D", str(data), "-U", "postgres",
                                 "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"]),
                   check=True, capture_output=True, timeout=120)
    server = subprocess.Popen(
        _as_postgres([_bin("postgres"), "-D", str(data), "-p", str(port), "-c",
                      "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={folder}",
                      "-c", "fsync=off"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        import psycopg

        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
