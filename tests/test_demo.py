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
    # the set requires signed factory data: each partition, read back, verifies with the plant key
    checks = [line for line in out.splitlines() if "factory data: signature" in line]
    assert len(checks) == 2
    assert all(line.endswith("verifies with the plant key") for line in checks)
    assert "2 partition(s) read back and checked, 0 problem(s)" in out
    chained = [line for line in out.splitlines() if "chains to the plant device root" in line]
    assert len(chained) == 2

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


def test_demo_runs_a_four_slot_panel_end_to_end() -> None:
    result = fixture_agent("demo", "--units", "4", "--slots", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    units = [line for line in result.stdout.splitlines() if line.startswith("unit ")]
    assert sorted((line.split(" slot ")[1][0], line.split("serial ")[1][:9]) for line in units) == [
        ("a", "SN-001000"), ("b", "SN-001001"), ("c", "SN-001002"), ("d", "SN-001003")]
    assert all(": PASS in " in line for line in units)
    assert "1 panel(s) of 4 slot(s)" in result.stdout
    assert "WARNING" not in result.stderr  # workers start, serve and stop quietly
