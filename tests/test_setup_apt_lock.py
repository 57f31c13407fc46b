"""scripts/setup waits (bounded) for another apt run instead of failing at once.

apt takes fcntl locks; a holder here is another process with an fcntl lock on a lock file, just
as an unattended upgrade holds /var/lib/dpkg/lock-frontend.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold(lock: Path, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    return holder


def wait_for_apt(lock: Path, wait_s: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, FIXTURE_AGENT_APT_LOCKS=f"{lock}:{lock}.absent",
               FIXTURE_AGENT_APT_WAIT_S=str(wait_s))
    return subprocess.run(["python3", str(ROOT / "scripts" / "wait-for-apt")], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_waits_for_a_held_lock_then_goes_on(tmp_path: Path) -> None:
    lock = tmp_path / "lock-frontend"
    holder = hold(lock, 1.5)
    result = wait_for_apt(lock, 30)
    released = holder.wait()
    assert released == 0  # the holder finished its sleep: the waiter did not steal the lock
    assert result.returncode == 0, result.stderr
    assert f"waiting for another package manager run to release {lock}" in result.stderr


def test_gives_up_after_its_limit_and_names_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "lock-frontend"
    holder = hold(lock, 30)
    try:
        result = wait_for_apt(lock, 1)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1
    assert f"still holds {lock}" in result.stderr


def test_free_or_missing_locks_do_not_wait(tmp_path: Path) -> None:
    (tmp_path / "lock-frontend").touch()
    result = wait_for_apt(tmp_path / "lock-frontend", 30)
    assert result.returncode == 0
    assert result.stderr == ""  # it never said it was waiting


def test_setup_waits_before_every_apt_get() -> None:
    setup = (ROOT / "scripts" / "setup").read_text()
    waiter = setup.index("scripts/wait-for-apt")
    calls = [i for i in range(len(setup)) if setup.startswith("apt-get", i)]
    assert calls
    assert all(waiter < call for call in calls)
    assert setup.count("DPkg::Lock::Timeout") == 1  # and apt itself waits as well
