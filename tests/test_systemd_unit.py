"""The systemd unit passes `systemd-analyze verify` and keeps the properties the service needs."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "fixture-agent.service"
INSTALLED = "/opt/fixture-agent/.venv/bin/fixture-agent"


def verify(text: str, tmp_path: Path) -> str:
    """systemd-analyze's complaints about a unit (the binary path pointed at this venv's)."""
    local = str(Path(sys.executable).parent / "fixture-agent")
    unit = tmp_path / "fixture-agent.service"
    unit.write_text(text.replace(INSTALLED, local))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, check=False)
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if "fixture-agent.service" in line]
    assert result.returncode == 0 or complaints, result.stderr
    return "\n".join(complaints)


def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    assert verify(UNIT.read_text(), tmp_path) == ""


def test_verify_would_catch_a_broken_directive(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("Restart=on-failure", "Restart=sometimes")
    assert "restart specifier" in verify(broken, tmp_path)


def test_unit_is_a_watched_notify_service_with_hardware_access() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "on-failure"
    assert service["User"] == "fixture-agent"
    assert set(service["SupplementaryGroups"].split()) >= {"gpio", "plugdev", "dialout"}
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
