"""`fixture-agent plant keygen / sign-set / verify-set` with key files, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli import main
from agent.firmware.trust import load_trust_store
from tests.firmware_support import manifest_dict


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["plant", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def release(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    """A key file pair and a trust store made from keygen's own output."""
    code, out, _ = run(capsys, "keygen", "--alg", "ecdsa-p256", "--out", str(tmp_path / "keys"),
                       "--name", "owner", "--key-id", "owner-2030")
    assert code == 0
    trust = tmp_path / "trust.toml"
    trust.write_text("[trust]\n" + "\n".join(line for line in out.splitlines()
                                             if not line.startswith("#")))
    assert load_trust_store(trust).keys[0].key_id == "owner-2030"
    assert (tmp_path / "keys" / "owner.key").stat().st_mode & 0o777 == 0o600
    return tmp_path / "keys" / "owner.key", trust


def write_manifest(tmp_path: Path, **fields: object) -> Path:
    path = tmp_path / "set.json"
    path.write_text(json.dumps(manifest_dict(**fields), indent=2))  # type: ignore[arg-type]
    return path


def test_sign_then_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          release: tuple[Path, Path]) -> None:
    key, trust = release
    manifest = write_manifest(tmp_path)
    code, out, _ = run(capsys, "sign-set", str(manifest), "--key", str(key),
                       "--key-id", "owner-2030")
    assert code == 0, out
    signed = tmp_path / "set.signed.json"
    code, out, err = run(capsys, "verify-set", str(signed), "--trust-store", str(trust),
                         "--at", "2030-06-01T12:00:00+00:00")
    assert code == 0, err
    assert out.startswith("OK set widget-2030.1 product widget sequence 5")
    assert "signed by owner-2030" in out


def test_verify_names_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 release: tuple[Path, Path]) -> None:
    key, trust = release
    manifest = write_manifest(tmp_path)
    run(capsys, "sign-set", str(manifest), "--key", str(key), "--out", str(tmp_path / "s.json"))
    code, _, err = run(capsys, "verify-set", str(tmp_path / "s.json"), "--trust-store",
                       str(trust), "--at", "2030-06-01T12:00:00+00:00")
    assert code == 1  # signed under the fingerprint id, which the store does not know
    assert err.startswith("REFUSED unknown_key")
    run(capsys, "sign-set", str(manifest), "--key", str(key), "--key-id", "owner-2030",
        "--out", str(tmp_path / "s.json"))
    code, _, err = run(capsys, "verify-set", str(tmp_path / "s.json"), "--trust-store",
                       str(trust), "--at", "2031-01-01T00:00:00+00:00")
    assert (code, err.split(":")[0]) == (1, "REFUSED expired")


def test_sign_refuses_an_invalid_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          release: tuple[Path, Path]) -> None:
    key, _ = release
    manifest = write_manifest(tmp_path)
    body = json.loads(manifest.read_text())
    body["images"][0]["size"] = -1
    manifest.write_text(json.dumps(body))
    code, _, err = run(capsys, "sign-set", str(manifest), "--key", str(key))
    assert code == 2
    assert "images.0.size" in err
    assert not (tmp_path / "set.signed.json").exists()


def test_keygen_never_overwrites_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    assert run(capsys, "keygen", "--out", str(tmp_path))[0] == 0
    code, _, err = run(capsys, "keygen", "--out", str(tmp_path))
    assert code == 2
    assert "refusing to overwrite" in err


def test_an_encrypted_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELEASE_PASS", "correct horse")
    assert run(capsys, "keygen", "--out", str(tmp_path), "--passphrase-env", "RELEASE_PASS")[0] == 0
    manifest = write_manifest(tmp_path)
    key = str(tmp_path / "release.key")
    assert run(capsys, "sign-set", str(manifest), "--key", key)[0] == 1  # no passphrase
    assert run(capsys, "sign-set", str(manifest), "--key", key,
               "--passphrase-env", "RELEASE_PASS")[0] == 0
