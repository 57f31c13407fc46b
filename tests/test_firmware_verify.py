"""verify_signed_set: every way a signed firmware set can be wrong has its own reason code."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import FirmwareSetError
from agent.firmware.antirollback import Accepted
from agent.firmware.manifest import canonical_manifest, manifest_digest
from agent.firmware.trust import verify_signed_set
from tests.firmware_support import NOW, Release, manifest_dict, to_bytes, trust_of

OWNER = Release("owner-2030")
P256 = Release("owner-p256", "ecdsa-p256")
TRUST = trust_of(OWNER.trusted(), P256.trusted())


def signed(**fields: object) -> bytes:
    return OWNER.sign(to_bytes(manifest_dict(**fields)))  # type: ignore[arg-type]


def reason_of(raw: bytes, trust=TRUST, **kwargs: object) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(FirmwareSetError) as info:
        verify_signed_set(raw, trust, now=kwargs.pop("now", NOW), **kwargs)  # type: ignore[arg-type]
    return info.value.code


def test_a_good_set_verifies_with_either_algorithm() -> None:
    manifest = manifest_dict()
    for release in (OWNER, P256):
        verified = verify_signed_set(release.sign(to_bytes(manifest)), TRUST, now=NOW)
        assert verified.set_id == "widget-2030.1"
        assert verified.key_ids == (release.key_id,)
        assert verified.digest == manifest_digest(canonical_manifest(manifest))
        assert verified.firmware_set.images[0].address == 0x1000


def test_signing_is_over_the_canonical_form_not_the_file_layout() -> None:
    manifest = manifest_dict()
    compact = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
    a = verify_signed_set(OWNER.sign(to_bytes(manifest)), TRUST, now=NOW)
    b = verify_signed_set(OWNER.sign(compact), TRUST, now=NOW)
    assert a.digest == b.digest


def test_wrong_key_under_a_trusted_id_is_a_bad_signature() -> None:
    impostor = Release(OWNER.key_id)
    assert reason_of(impostor.sign(to_bytes(manifest_dict()))) == "bad_signature"


def test_a_key_the_station_does_not_know() -> None:
    assert reason_of(Release("stranger").sign(to_bytes(manifest_dict()))) == "unknown_key"


def test_revoked_key() -> None:
    trust = trust_of(OWNER.trusted(), P256.trusted(), revoked=(OWNER.key_id,))
    assert reason_of(signed(), trust) == "revoked_key"


def test_expired_key() -> None:
    trust = trust_of(OWNER.trusted(not_after=NOW - timedelta(seconds=1)))
    assert reason_of(signed(), trust) == "expired_key"


def test_unsigned() -> None:
    envelope = json.loads(signed())
    envelope["signatures"] = []
    assert reason_of(json.dumps(envelope).encode()) == "unsigned"


def test_algorithm_confusion_is_refused() -> None:
    envelope = json.loads(signed())
    envelope["signatures"][0]["alg"] = "ecdsa-p256"
    assert reason_of(json.dumps(envelope).encode()) == "alg_mismatch"


def test_one_byte_of_the_manifest_changed() -> None:
    raw = signed()
    tampered = raw.replace(b'"sequence":5', b'"sequence":6')
    assert tampered != raw
    assert reason_of(tampered) == "bad_signature"


def test_a_signature_over_another_canonical_form() -> None:
    manifest = manifest_dict()
    envelope = json.loads(signed())
    pretty = to_bytes(manifest)  # what a naive signer would sign
    sig = OWNER.signer.sign(pretty)
    envelope["signatures"][0]["sig"] = base64.b64encode(sig).decode()
    assert reason_of(json.dumps(envelope).encode()) == "bad_signature"


def test_expired_and_not_yet_valid_sets() -> None:
    assert reason_of(signed(), now=NOW + timedelta(days=31)) == "expired"
    assert reason_of(signed(), now=NOW - timedelta(days=2)) == "not_yet_valid"


def test_anti_rollback() -> None:
    newer = verify_signed_set(signed(sequence=7), TRUST, now=NOW)
    state = {"widget": Accepted(7, newer.digest, newer.set_id)}
    assert reason_of(signed(sequence=6), accepted=state) == "rollback"
    again = verify_signed_set(signed(sequence=7), TRUST, now=NOW, accepted=state)
    assert again.digest == newer.digest
    other = signed(sequence=7, set_id="widget-2030.1b")
    assert reason_of(other, accepted=state) == "sequence_conflict"
    assert verify_signed_set(signed(sequence=8), TRUST, now=NOW, accepted=state)


def test_a_signed_but_inconsistent_manifest_is_refused_after_the_signature() -> None:
    manifest = manifest_dict()
    manifest["valid_flag"]["address"] = "0x00001010"  # inside the app image
    assert reason_of(OWNER.sign_unchecked(manifest)) == "invalid_manifest"


@pytest.mark.parametrize(
    "payload",
    [
        b'{"schema":"fixture-agent/signed-firmware-set@1","manifest":{"a":1,"a":2},'
        b'"signatures":[]}',
        b'{"schema":"fixture-agent/signed-firmware-set@1","manifest":{"a":NaN},"signatures":[]}',
        b'{"schema":"fixture-agent/signed-firmware-set@1","manifest":{"a":"\\ud800"},'
        b'"signatures":[]}',
        b'{"schema":"fixture-agent/signed-firmware-set@1","manifest":{"a":' + b"[" * 100
        + b"]" * 100 + b'},"signatures":[]}',
        b"[]",
        b"",
        b"\xff\xfe",
        b'{"manifest":{},"signatures":[],"extra":1}',
    ],
)
def test_json_edge_cases_are_malformed(payload: bytes) -> None:
    assert reason_of(payload) == "malformed"


def test_integers_beyond_the_canonical_domain_are_malformed() -> None:
    envelope = json.loads(signed())
    envelope["manifest"]["sequence"] = 2**60
    assert reason_of(json.dumps(envelope).encode()) == "malformed"


def test_threshold_counts_distinct_trusted_keys() -> None:
    trust = trust_of(OWNER.trusted(), P256.trusted(), threshold=2)
    once = signed()
    assert reason_of(once, trust) == "threshold_not_met"
    twice = P256.sign(once)
    assert verify_signed_set(twice, trust, now=NOW).key_ids == (OWNER.key_id, P256.key_id)
    envelope = json.loads(once)
    envelope["signatures"].append(envelope["signatures"][0])
    assert reason_of(json.dumps(envelope).encode(), trust) == "threshold_not_met"


SIGNED = signed()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.integers(0, len(SIGNED) - 1), value=st.integers(0, 255))
def test_any_single_byte_change_is_refused(position: int, value: int) -> None:
    if SIGNED[position] == value:
        value ^= 0x01
    tampered = bytearray(SIGNED)
    tampered[position] = value
    with pytest.raises(FirmwareSetError):
        verify_signed_set(bytes(tampered), TRUST, now=NOW)


def test_the_station_side_never_imports_signing_code() -> None:
    import subprocess
    import sys

    probe = ("import sys, agent.firmware.manager, agent.firmware.trust; "
             "bad = [m for m in sys.modules if m.startswith(('agent.plant', 'pkcs11'))]; "
             "sys.exit(bool(bad) and print(bad) is None)")
    assert subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0
