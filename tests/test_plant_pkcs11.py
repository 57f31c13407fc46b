"""Signing with a key that lives on a PKCS#11 token (SoftHSM2), verified by the station code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.firmware.trust import load_trust_store, verify_signed_set
from tests.firmware_support import NOW, manifest_dict

MODULE = next((p for p in ("/usr/lib/softhsm/libsofthsm2.so",
                           "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                           "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so")
               if Path(p).exists()), "/usr/lib/softhsm/libsofthsm2.so")


@pytest.fixture
def token_env(tmp_path: Path) -> dict[str, str]:
    """A SoftHSM2 configuration of its own with one initialised token labelled 'plant'."""
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf), "TOKEN_PIN": "1234"}
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "plant",
                    "--pin", "1234", "--so-pin", "5678"], env=env, check=True,
                   capture_output=True)
    return env


def plant(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "plant", *argv], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("alg", ["ecdsa-p256", "ed25519"])
def test_a_token_key_signs_a_set_the_station_accepts(
    tmp_path: Path, token_env: dict[str, str], alg: str
) -> None:
    token = ["--pkcs11-module", MODULE, "--token-label", "plant", "--key-label", "release",
             "--pin-env", "TOKEN_PIN"]
    keygen = plant(token_env, "keygen", "--alg", alg, "--key-id", "hsm-release", *token)
    assert keygen.returncode == 0, keygen.stderr
    trust = tmp_path / "trust.toml"
    trust.write_text("[trust]\n" + keygen.stdout)
    manifest = tmp_path / "set.json"
    manifest.write_text(json.dumps(manifest_dict()))
    signed = plant(token_env, "sign-set", str(manifest), "--key-id", "hsm-release", *token)
    assert signed.returncode == 0, signed.stderr
    raw = (tmp_path / "set.signed.json").read_bytes()
    verified = verify_signed_set(raw, load_trust_store(trust), now=NOW)
    assert verified.key_ids == ("hsm-release",)
    assert json.loads(raw)["signatures"][0]["alg"] == alg


def test_a_wrong_pin_is_reported(token_env: dict[str, str], tmp_path: Path) -> None:
    manifest = tmp_path / "set.json"
    manifest.write_text(json.dumps(manifest_dict()))
    result = plant(token_env, "sign-set", str(manifest), "--pkcs11-module", MODULE,
                   "--token-label", "plant", "--key-label", "release", "--pin", "0000")
    assert result.returncode == 1
    assert "wrong PIN" in result.stderr
