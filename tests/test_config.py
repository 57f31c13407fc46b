"""Station configuration: the shipped files load; every defect names its key, expectation, find."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "check-config", str(path)],
                          capture_output=True, text=True, check=False)


def test_shipped_example_config_is_valid() -> None:
    result = check_config(ROOT / "config" / "station.example.toml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: station ")


def test_demo_config_needs_the_users_own_release_key(tmp_path: Path) -> None:
    alone = check_config(ROOT / "config" / "demo.toml")
    assert alone.returncode == 2
    assert "fixture-agent plant keygen" in alone.stderr  # says how, not just "missing"
    keygen = subprocess.run([sys.executable, "-m", "agent", "plant", "keygen", "--key-id",
                             "lab", "--out", str(tmp_path / "keys")], capture_output=True,
                            text=True, check=True)
    station = tmp_path / "station.toml"
    station.write_text((ROOT / "config" / "demo.toml").read_text() + keygen.stdout)
    result = check_config(station)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: station demo-st01")


def test_embedded_demo_config_is_the_shipped_one_plus_its_trust() -> None:
    shipped = tomllib.loads((ROOT / "config" / "demo.toml").read_text())
    embedded = tomllib.loads(resources.files("agent.demo").joinpath("station.toml").read_text())
    assert set(embedded) - set(shipped) == {"trust"}
    assert {key: embedded[key] for key in shipped} == shipped


def test_check_config_lists_every_problem_with_its_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    text = (ROOT / "config" / "station.example.toml").read_text()
    text = text.replace('id = "line3-st07"', 'id = "Line 3"').replace("port = 8883",
                                                                     'port = "8883x"')
    text = text.replace("lamp_busy = 13", "lamp_busy = 40").replace('backend = "pyocd"',
                                                                    'backend = "swd"')
    bad.write_text(text + "\n[extra]\nthing = 1\n")
    result = check_config(bad)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"{bad}: 5 problem(s)"
    assert any(line.strip().startswith("station.id:") and "'Line 3'" in line for line in lines)
    assert any(line.strip().startswith("broker.port:") and "'8883x'" in line for line in lines)
    assert any(line.strip().startswith("fixture.pins.lamp_busy:") and "found 40" in line
               for line in lines)
    assert any(line.strip().startswith("slots.0:") and "'pyocd'" in line for line in lines)
    assert any(line.strip().startswith("extra:") and "not permitted" in line for line in lines)


def test_semantic_errors_are_reported(tmp_path: Path) -> None:
    text = (ROOT / "config" / "station.example.toml").read_text()
    path = tmp_path / "dup.toml"
    path.write_text(text.replace("lamp_busy = 13", "lamp_busy = 5"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any("pin 5 is used by both lamp_pass and lamp_busy" in p for p in info.value.problems)


def test_missing_and_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[station\nid = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_a_signer_needs_a_client_certificate_and_its_files_are_relative_to_the_config(
        tmp_path: Path) -> None:
    from agent.config import parse_config
    from tests.helpers import station_raw

    raw = station_raw(tmp_path, 1883) | {"signer": {"url": "https://signer:8443",
                                                    "ca": "tls/plant-ca.pem"}}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, source="station.toml", base=tmp_path)
    assert "signer: the station needs a client certificate" in str(caught.value)
    raw["signer"] |= {"cert": "tls/st.pem", "key": "tls/st.key"}
    config = parse_config(raw, source="station.toml", base=tmp_path)
    assert config.signer_identity() == (tmp_path / "tls/st.pem", tmp_path / "tls/st.key")
    assert config.signer is not None
    assert config.signer.ca == tmp_path / "tls/plant-ca.pem"
