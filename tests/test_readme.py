"""The README's commands run exactly as written (every ```sh block marked `<!-- run: NAME -->`).

They run from the checkout with ``bash -euo pipefail``. The walkthrough talks to a broker on
127.0.0.1:1883, as a newcomer's would; it runs in a private network namespace (``unshare``) whose
loopback has only the test's own mosquitto on that port, so the commands need no substitution.
"""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.sim.broker import find_mosquitto

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^<!-- run: (?P<name>[a-z-]+) -->\n```sh\n(?P<body>.*?)^```", re.S | re.M)


def blocks() -> dict[str, str]:
    return {m["name"]: m["body"] for m in BLOCK.finditer((ROOT / "README.md").read_text())}


def run(script: str, *, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_the_marked_blocks_are_there() -> None:
    assert set(blocks()) == {"walkthrough", "secure-broker", "swd", "uart", "checks", "panel",
                             "signer", "fleet", "plant-scale"}


@pytest.mark.parametrize("name", ["swd", "uart", "panel", "signer", "fleet", "plant-scale"])
def test_block_runs_as_written(name: str) -> None:
    result = run(blocks()[name], timeout=300)
    assert result.returncode == 0, f"{name}:\n{result.stdout}\n{result.stderr}"
    if name == "swd":
        assert "read back identical" in result.stdout
    if name == "signer":
        assert "signature verifies with the given public key" in result.stdout
        assert "2 of 2 units signed" in result.stdout
    if name == "fleet":
        assert "fleet demo: bad set rolled_back, good set completed: as expected" in result.stdout
    if name == "plant-scale":
        assert result.stdout.splitlines()[0] == "2", result.stdout  # both units, by their key
        assert "station demo-st01: 2/2 units passed first time (100.0%)" in result.stdout
        assert "station demo-st01: 2 records, seq 1..2: clean" in result.stdout


def test_static_checks_block_passes() -> None:
    result = run(blocks()["checks"], timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_walkthrough_runs_as_written_against_a_broker_on_1883(tmp_path: Path) -> None:
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener 1883 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    f"user {getpass.getuser()}\n")
    script = f"""
ip link set lo up
{find_mosquitto()} -c {conf} > {tmp_path}/mosquitto.log 2>&1 &
broker=$!
trap 'kill $broker' EXIT
until (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; do sleep 0.05; done
{blocks()["walkthrough"]}
"""
    unshare = shutil.which("unshare")
    assert unshare is not None, "unshare (util-linux) is needed"
    result = subprocess.run([unshare, "--user", "--map-root-user", "--net", "--", "bash",
                             "-euo", "pipefail", "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, check=False)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    units = [line for line in out.splitlines() if " unit slot a serial " in line]
    assert len(units) == 5, out
    assert all(": PASS in " in line for line in units)
    assert "simulated operator: 5 units done; every record acknowledged by the plant" in out
    assert "serial SN-001000: PASS, routed to ship" in out  # the trace
    assert re.search(r"demo-st01\s+offline\s+sensor-node\s+sensor-node-lab\.1\s+active", out), out


def test_securing_the_plant_broker_runs_as_written() -> None:
    """In its own network namespace (the shipped ports 8883 and 8884 are free there) and PID
    namespace (whatever the block leaves running ends with it)."""
    unshare = shutil.which("unshare")
    assert unshare is not None, "unshare (util-linux) is needed"
    script = f"ip link set lo up\n{blocks()['secure-broker']}"
    result = subprocess.run([unshare, "--user", "--map-root-user", "--net", "--pid", "--fork",
                             "--", "bash", "-euo", "pipefail", "-c", script], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, check=False)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    units = [line for line in out.splitlines() if " unit slot a serial " in line]
    assert len(units) == 3, out
    assert all(": PASS in " in line for line in units)
    assert "simulated operator: 3 units done; every record acknowledged by the plant" in out
    assert "serial SN-002000: PASS, routed to ship" in out  # the trace
    assert "refused, as it should be" in out
    assert "broker refused publish to fixture/v1/station/demo-st01/job" in result.stderr
