"""Users see sentences, not tracebacks: each case here once printed a traceback or a wall of text
(see also the broker address form every command shares)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.plant.records import Incoming, RecordStore, open_record_db
from agent.wire.codec import encode
from agent.wire.messages import UnitRecord
from tests.firmware_support import manifest_dict

ROOT = Path(__file__).resolve().parent.parent


def fixture_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_run_without_gpio_names_what_is_missing_and_how_to_get_it(tmp_path: Path) -> None:
    config = tmp_path / "station.toml"
    keygen = fixture_agent("plant", "keygen", "--key-id", "k", "--out", str(tmp_path / "keys"))
    demo = (ROOT / "config" / "demo.toml").read_text().replace('backend = "sim"',
                                                               'backend = "gpio"')
    config.write_text(demo + keygen.stdout)
    result = fixture_agent("run", str(config), "--state-dir", str(tmp_path / "state"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "no usable GPIO" in result.stderr
    assert "lgpio" in result.stderr
    assert "fixture-agent[pi]" in result.stderr
    assert 'fixture.backend = "sim"' in result.stderr


def test_trace_into_a_pipe_that_closes_early_is_quiet(tmp_path: Path) -> None:
    db_path = tmp_path / "records.db"

    async def fill() -> None:
        db = await open_record_db(db_path)
        now = datetime.now(UTC)
        batch = [Incoming("st-1", encode(UnitRecord(
            record_id=uuid.uuid4().hex, seq=n, prev_digest="0" * 64, station="st-1", slot="a",
            job_id="wo-1",
            product="p", serial="SN-1", chip_uid="00", images=(), firmware_set_id="s",
            manifest_digest="d", started_at=now, finished_at=now, stages=(), outcome="fail",
            routing="rework", agent_version="t"))) for n in range(1, 1501)]
        await RecordStore(db).store_batch(batch)
        await db.close()

    asyncio.run(fill())  # about 600 KB of trace: far more than a pipe holds
    trace = subprocess.Popen([sys.executable, "-m", "agent", "trace", "SN-1", "--db",
                              str(db_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert trace.stdout is not None
    assert trace.stderr is not None
    assert trace.stdout.readline().startswith(b"serial SN-1: FAIL")
    trace.stdout.close()  # what `| head -1` does
    stderr = trace.stderr.read().decode()
    trace.wait(timeout=30)
    assert "Traceback" not in stderr
    assert "BrokenPipeError" not in stderr


def test_verify_set_on_an_unsigned_manifest_says_it_is_unsigned(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(manifest_dict(), indent=2))
    trust = tmp_path / "trust.toml"
    trust.write_text(fixture_agent("plant", "keygen", "--key-id", "k", "--out",
                                   str(tmp_path / "keys")).stdout)
    result = fixture_agent("plant", "verify-set", str(manifest), "--trust-store", str(trust))
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()  # one sentence, not every missing envelope field
    assert line.startswith("REFUSED unsigned: this is a bare manifest")
    assert "plant sign-set" in line


@pytest.mark.parametrize("command", [["recorder", "--db", "x.db"],
                                     ["plant", "rollout-status"],
                                     ["plant", "publish-job", "--station", "st-1"],
                                     ["plant", "publish-set", "x", "--station", "st-1",
                                      "--trust-store", "t"]])
def test_every_broker_command_takes_one_address_form_with_its_default_shown(
        command: list[str]) -> None:
    shown = fixture_agent(*command, "--help")
    assert "HOST:PORT, mqtt://HOST[:PORT] or mqtts://HOST[:PORT]" in shown.stdout
    assert "(default: 127.0.0.1:1883)" in shown.stdout
    assert "--port" not in shown.stdout
    wrong = fixture_agent(*command, "--broker", "127.0.0.1")
    assert wrong.returncode == 2
    assert "Traceback" not in wrong.stderr
    assert "--broker: broker address '127.0.0.1': expected HOST:PORT" in wrong.stderr


def test_plant_service_on_a_taken_console_address_says_so(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = fixture_agent("recorder", "--db", str(tmp_path / "plant.db"), "--console",
                               f"127.0.0.1:{port}", "--broker", "127.0.0.1:1")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"the console cannot listen on 127.0.0.1:{port}" in result.stderr
    bad = fixture_agent("recorder", "--db", str(tmp_path / "plant.db"), "--console", "8080")
    assert bad.returncode == 2
    assert "--console: expected HOST:PORT" in bad.stderr


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--queue-size", "0", "'0' is not a whole number from 1 to 65535"),
    ("--queue-size", "70000", "from 1 to 65535"),
    ("--batch-max", "many", "'many' is not a whole number from 1 to 100000")])
def test_recorder_limits_out_of_range_are_refused_in_a_sentence(
        tmp_path: Path, option: str, value: str, expected: str) -> None:
    """A Receive Maximum of 0 is a protocol error the broker answers by closing: the recorder
    retried silently for ever."""
    result = fixture_agent("recorder", "--db", str(tmp_path / "r.db"), option, value)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("action", [["status"], ["approve", "1"], ["abort", "1"]])
def test_a_rollout_command_on_a_mistyped_plant_database_says_so_and_makes_none(
        tmp_path: Path, action: list[str]) -> None:
    """It made an empty database no rollout engine reads, and answered "no rollouts"."""
    typo = tmp_path / "plnat.db"
    result = fixture_agent("plant", "rollout", *action, "--db", str(typo))
    assert result.returncode == 2
    assert f"{typo}: no such plant database" in result.stderr
    assert "Traceback" not in result.stderr
    assert not typo.exists()
