"""Chip ids that no real part has are refused before a serial is bound to them."""

from __future__ import annotations

from agent.errors import FailureCode, UnitFailure

IDENTIFY_STAGE = "identify"


def check_chip_id(chip_uid: str, *, expected_bytes: int | None) -> None:
    """Refuse an id no real part has, before a serial is bound to it.

    A probe that reads a disconnected or unpowered bus returns all 0x00 or all 0xFF; a part of
    another family has another id length. Recording such an id as the unit's identity would tie
    a serial (and later a signed identity) to nothing.
    """
    try:
        raw = bytes.fromhex(chip_uid)
    except ValueError:
        raw = b""
    problem = None
    if not raw:
        problem = "is not a hexadecimal id"
    elif expected_bytes is not None and len(raw) != expected_bytes:
        problem = f"has {len(raw)} bytes where this part has {expected_bytes}"
    elif raw == bytes(len(raw)):
        problem = "is all 0x00 (no part answered)"
    elif raw == b"\xff" * len(raw):
        problem = "is all 0xFF (no part answered)"
    if problem is not None:
        raise UnitFailure(code=FailureCode.UID_INVALID, stage=IDENTIFY_STAGE,
                          detail=f"chip id {chip_uid!r} {problem}")
