"""The README's demo command, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def fixture_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def test_demo_programs_units_and_exits_zero_only_when_all_records_are_acknowledged(
        tmp_path: Path) -> None:
    result = fixture_agent("demo", "--units", "2", "--workdir", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "signed by demo-release and published" in out
    unit_lines = [line for line in out.splitlines() if line.startswith("unit ")]
    assert len(unit_lines) == 2
    assert all(": PASS in " in line for line in unit_lines)
    assert "2 pass, 0 fail; outbox empty: every record acknowledged; sequence gaps: none" in out
    assert "$ fixture-agent trace SN-001001" in out
    assert "serial SN-001001: PASS, routed to ship" in out
    assert "key hsm:release-boot-2026" in out

    records_db = tmp_path / "plant" / "records.db"
    traced = fixture_agent("trace", "SN-001000", "--db", str(records_db), "--json")
    assert traced.returncode == 0
    (record,) = json.loads(traced.stdout)
    assert record["serial"] == "SN-001000"
    assert record["firmware_set_id"] == "sensor-node-2026.11"
    assert {i["key_ref"] for i in record["images"]} >= {"hsm:release-boot-2026"}
    unknown = fixture_agent("trace", "SN-999999", "--db", str(records_db))
    assert unknown.returncode == 1
    assert "no record of serial SN-999999" in unknown.stderr


def test_demo_without_workdir_prints_no_command_for_files_it_removes() -> None:
    result = fixture_agent("demo", "--units", "1", "--backend", "sim-flash")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--db" not in result.stdout  # its database is gone when the demo exits
    assert "keep them with --workdir DIR" in result.stdout
    assert "serial SN-001000: PASS, routed to ship" in result.stdout  # the trace is still shown
