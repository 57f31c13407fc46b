"""The life of one firmware set on a station, as a pure state machine, and its persisted form.

received -> verified -> prefetching -> staged -> active, or failed (with a reason code) on the
way. ``superseded`` is a set that was active (or waiting) when a newer one of the same product
took over; it can become active again by a rollback. Any other move is a bug and raises.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import AgentError
from agent.firmware.atomic import write_atomic
from agent.firmware.manifest import MAX_SIGNED_SET_BYTES
from agent.firmware.reasons import Reason, refuse
from agent.firmware.trust import VerifiedSet


class SetState(StrEnum):
    """Where a firmware set is in its rollout on this station."""

    RECEIVED = "received"
    VERIFIED = "verified"
    PREFETCHING = "prefetching"
    STAGED = "staged"
    ACTIVE = "active"
    SUPERSEDED = "superseded"
    FAILED = "failed"


TRANSITIONS: dict[SetState, frozenset[SetState]] = {
    SetState.RECEIVED: frozenset({SetState.VERIFIED, SetState.FAILED}),
    SetState.VERIFIED: frozenset({SetState.PREFETCHING, SetState.SUPERSEDED, SetState.FAILED}),
    SetState.PREFETCHING: frozenset({SetState.STAGED, SetState.SUPERSEDED, SetState.FAILED}),
    SetState.STAGED: frozenset({SetState.ACTIVE, SetState.SUPERSEDED, SetState.FAILED}),
    SetState.ACTIVE: frozenset({SetState.SUPERSEDED, SetState.FAILED}),
    SetState.SUPERSEDED: frozenset({SetState.ACTIVE, SetState.FAILED}),
    SetState.FAILED: frozenset(),
}
HOLDS_IMAGES = frozenset({SetState.VERIFIED, SetState.PREFETCHING, SetState.STAGED,
                          SetState.ACTIVE, SetState.SUPERSEDED})


class IllegalTransition(AgentError):
    """A rollout step that the state machine does not allow (a bug in the caller)."""


class SetStatus(BaseModel):
    """What the station reports about one set (published in its status, ``rollout.sets``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    set_id: str
    state: SetState
    source_topic: str
    at: datetime
    product: str | None = None
    sequence: int | None = None
    digest: str | None = None
    activation: str | None = None
    activate_at: datetime | None = None
    images_ready: int = 0
    images_total: int = 0
    code: str | None = None
    reason: str | None = None


def advance(
    status: SetStatus, to: SetState, *, at: datetime, code: str | None = None,
    reason: str | None = None, images_ready: int | None = None,
) -> SetStatus:
    """The next status, or IllegalTransition; ``code``/``reason`` only for failed/superseded."""
    if to not in TRANSITIONS[status.state]:
        raise IllegalTransition(f"set {status.set_id}: {status.state} -> {to} is not allowed")
    return status.model_copy(update={
        "state": to, "at": at, "code": code, "reason": reason,
        "images_ready": status.images_ready if images_ready is None else images_ready,
    })


class RolloutSummary(BaseModel):
    """The ``rollout`` field of a station's status: active/previous set per product, all sets."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    active: dict[str, str] = Field(default_factory=dict)
    previous: dict[str, str] = Field(default_factory=dict)
    sets: Annotated[tuple[SetStatus, ...], Field(max_length=64)] = ()


@dataclass
class RolloutFile:
    """The persisted rollout state: ``DIR/rollout.json`` and ``DIR/sets/<digest>.json``."""

    folder: Path

    def save_signed(self, digest: str, raw: bytes) -> None:
        """Keep a set's signed bytes: a restart verifies them again, never a parsed copy."""
        write_atomic(self.folder / "sets" / f"{digest}.json", raw)

    def load_signed(self, digest: str) -> bytes:
        """The signed bytes kept for ``digest``; CACHE_MISSING if they are gone."""
        try:
            return (self.folder / "sets" / f"{digest}.json").read_bytes()
        except FileNotFoundError:
            raise refuse(Reason.CACHE_MISSING, f"signed set {digest[:16]} is gone") from None

    def forget_signed(self, keep: set[str]) -> None:
        """Drop kept sets whose digest is not in ``keep``."""
        folder = self.folder / "sets"
        for path in folder.glob("*.json") if folder.exists() else ():
            if path.stem not in keep:
                path.unlink(missing_ok=True)

    def save(self, summary: RolloutSummary) -> None:
        """Write the summary atomically."""
        write_atomic(self.folder / "rollout.json", summary.model_dump_json(indent=1).encode())

    def load(self) -> RolloutSummary:
        """The last saved summary (empty on first start); STORAGE_ERROR if unreadable."""
        path = self.folder / "rollout.json"
        try:
            return RolloutSummary.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return RolloutSummary()
        except (OSError, ValidationError, json.JSONDecodeError) as exc:
            raise refuse(Reason.STORAGE_ERROR, f"rollout state {path} is unreadable: {exc}") \
                from None


@dataclass(frozen=True)
class Ready:
    """The job's set is active: program these images, in ``verified.firmware_set`` order."""

    verified: VerifiedSet
    images: dict[str, Path]


@dataclass(frozen=True)
class Waiting:
    """The job cannot start yet; ``code`` and ``reason`` go into the station's status."""

    set_id: str
    code: str
    reason: str

def describe_verified(verified: VerifiedSet, source_topic: str, now: datetime) -> SetStatus:
    m = verified.manifest
    return SetStatus(set_id=m.set_id, state=SetState.RECEIVED, source_topic=source_topic, at=now,
                     product=m.product, sequence=m.sequence, digest=verified.digest,
                     activation=m.activation.mode, activate_at=m.activation.at,
                     images_total=len(m.images))


def waiting_for(status: SetStatus) -> Waiting:
    if status.state == SetState.FAILED:
        return Waiting(status.set_id, status.code or "failed", f"set {status.set_id} failed: "
                       f"{status.reason}")
    if status.state == SetState.SUPERSEDED:
        return Waiting(status.set_id, Reason.SUPERSEDED, f"set {status.set_id}: {status.reason}")
    return Waiting(status.set_id, "set_not_staged", f"set {status.set_id} is {status.state} "
                   f"({status.images_ready}/{status.images_total} images)")


def claimed_set_id(raw: bytes) -> str:
    """The set id an unverified payload claims, only to label its status."""
    if len(raw) > MAX_SIGNED_SET_BYTES:
        return "unknown"
    try:
        value = json.loads(raw)["manifest"]["set_id"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return "unknown"
    return value if isinstance(value, str) and 0 < len(value) <= 64 else "unknown"
