"""`fixture-agent plant signer` as the plant runs it: PKI from `plant pki`, a key made with
`plant signer-keys create` on a SoftHSM2 token, the service in its own process; a station's
client asks it, then `plant quota` and `plant signer-audit` tell what happened."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from agent.demo.signer import softhsm_module
from agent.errors import UnitFailure
from agent.station.signing import SignerClient, client_tls
from agent.wire.signing import CertifyRequest, SignRequest


def agent(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "agent", *argv], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture
def plant(tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf), "TOKEN_PIN": "1234"}
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "plant", "--pin",
                    "1234", "--so-pin", "5678"], env=env, check=True, capture_output=True)
    token = ["--pkcs11-module", str(softhsm_module()), "--token-label", "plant",
             "--key-label", "factory-data", "--pin-env", "TOKEN_PIN"]
    created = agent(env, "plant", "signer-keys", "create", "--alg", "ecdsa-p256", *token)
    assert created.stdout.startswith("key pkcs11:token=plant;object=factory-data;")
    device_token = [*token[:4], "--key-label", "device-intermediate", "--pin-env", "TOKEN_PIN"]
    agent(env, "plant", "signer-keys", "create", "--alg", "ecdsa-p256", *device_token)
    agent(env, "plant", "device-ca", "--root-dir", str(tmp_path / "device-root"), "--out",
          str(tmp_path / "intermediate.pem"), *device_token)
    pki = tmp_path / "pki"
    agent(env, "plant", "pki", "init", "--dir", str(pki))
    agent(env, "plant", "pki", "signer", "--dir", str(pki), "--out", str(tmp_path / "tls"),
          "--ip", "127.0.0.1")
    agent(env, "plant", "pki", "issue-station", "line-3", "--dir", str(pki), "--out",
          str(tmp_path / "station"))
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "wo-7.json").write_text(json.dumps({
        "job_id": "wo-7", "station": "line-3", "product": "sensor-node", "set_id": "s-1",
        "serials": {"prefix": "SN-", "first": 1, "last": 99, "width": 6}, "quantity": 1}))
    service = subprocess.Popen(
        [sys.executable, "-m", "agent", "plant", "signer", "--db", str(tmp_path / "signer.db"),
         "--jobs", str(jobs), "--listen", "127.0.0.1:0", "--cert", str(tmp_path / "tls/signer.pem"),
         "--key", str(tmp_path / "tls/signer.key"), "--client-ca", str(pki / "station-ca.pem"),
         "--client-crl", str(pki / "station-ca.crl.pem"),
         "--device-ca-cert", str(tmp_path / "intermediate.pem"),
         "--device-ca-key-label", "device-intermediate", *token],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert service.stdout is not None
        line = service.stdout.readline()
        assert " on https://127.0.0.1:" in line, line + service.stderr.read()  # type: ignore
        yield env, line.rsplit(" on ", 1)[1].strip()
    finally:
        service.terminate()
        service.wait(timeout=10)


async def test_the_service_signs_refuses_over_quota_and_keeps_the_trail(
        plant: tuple[dict[str, str], str], tmp_path: Path) -> None:
    env, url = plant
    station = SignerClient(url=url, timeout_s=10, tls=client_tls(
        ca=tmp_path / "pki" / "plant-ca.pem", cert=tmp_path / "station" / "line-3.pem",
        key=tmp_path / "station" / "line-3.key"))
    request = SignRequest(job_id="wo-7", product="sensor-node", serial="SN-000001",
                          chip_uid="0a" * 8, digest="11" * 32)
    part_key = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        Encoding.X962, PublicFormat.UncompressedPoint)
    try:
        answer = await station.sign(request, stage="sign")
        assert answer.alg == "ecdsa-p256"
        certified = await station.certify(CertifyRequest(
            job_id="wo-7", product="sensor-node", serial="SN-000001", chip_uid="0a" * 8,
            public_key=part_key.hex()))
        with pytest.raises(UnitFailure) as over:
            await station.sign(request.model_copy(update={"serial": "SN-000002",
                                                          "chip_uid": "0b" * 8}), stage="sign")
    finally:
        await station.aclose()
    assert over.value.detail.startswith("quota_exhausted:")  # one chip: signed and certified
    cert = x509.load_der_x509_certificate(bytes.fromhex(certified.certificate))
    intermediate = x509.load_pem_x509_certificate((tmp_path / "intermediate.pem").read_bytes())
    cert.verify_directly_issued_by(intermediate)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "SN-000001"
    db = str(tmp_path / "signer.db")
    quota = agent(env, "plant", "quota", "wo-7", "--db", db, "--jobs", str(tmp_path / "jobs"))
    assert "job wo-7: 1 of 1 units signed" in quota.stdout
    trail = agent(env, "plant", "signer-audit", "--db", db, "--key-ref", answer.key_ref)
    assert f"signature {answer.signature_id}" in trail.stdout
    refused = agent(env, "plant", "signer-audit", "--db", db, "--serial", "SN-000002")
    assert "refused quota_exhausted" in refused.stdout
