"""The README's demo command, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys


def test_demo_programs_units_and_exits_zero_only_when_all_records_are_acknowledged() -> None:
    result = subprocess.run([sys.executable, "-m", "agent", "demo", "--units", "2"],
                            capture_output=True, text=True, timeout=120, check=False)
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
