"""Anti-rollback state: the newest firmware-set sequence accepted per product, kept on disk.

Stored as a small JSON file written atomically (temp file, fsync, rename, fsync of the folder),
not in the station's SQLite database: it changes once per release, must be all-or-nothing across
a power cut, must not compete with the outbox for SQLite's single writer connection, and a
technician can read it. A file that exists but cannot be read is an error (fail closed): silently
starting from empty state is exactly what a rollback attack needs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.firmware.atomic import write_atomic
from agent.firmware.reasons import Reason, refuse

STATE_SCHEMA = "fixture-agent/anti-rollback@1"


@dataclass(frozen=True, slots=True)
class Accepted:
    """The newest set accepted for one product."""

    sequence: int
    digest: str
    set_id: str


def check_sequence(
    state: Mapping[str, Accepted], *, product: str, sequence: int, digest: str, set_id: str
) -> bool:
    """Refuse an older set, or a different set under the same sequence.

    Returns True when the set is newer than anything accepted for ``product`` and False when it
    is the very set accepted last (same sequence and digest: a retained message seen again).
    """
    newest = state.get(product)
    if newest is None or sequence > newest.sequence:
        return True
    if sequence == newest.sequence and digest == newest.digest:
        return False
    if sequence == newest.sequence:
        raise refuse(
            Reason.SEQUENCE_CONFLICT,
            f"sequence {sequence} of {product} was already accepted for set {newest.set_id} "
            f"with digest {newest.digest[:16]}, this one has {digest[:16]}",
            set_id=set_id,
        )
    raise refuse(
        Reason.ROLLBACK,
        f"sequence {sequence} is older than {newest.sequence} (set {newest.set_id}) "
        f"already accepted for {product}",
        set_id=set_id,
    )


class AntiRollbackStore:
    """Newest accepted sequence per product, persisted in ``path``."""

    def __init__(self, path: Path, state: dict[str, Accepted]) -> None:
        self._path = path
        self._state = state
        self._lock = asyncio.Lock()

    @classmethod
    def load(cls, path: Path) -> AntiRollbackStore:
        """Read the state file (absent = nothing accepted yet); STORAGE_ERROR if unreadable."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path, {})
        except OSError as exc:
            raise refuse(Reason.STORAGE_ERROR, f"cannot read {path}: {exc}") from None
        return cls(path, _decode(raw, path))

    def view(self) -> Mapping[str, Accepted]:
        """A read-only snapshot for :func:`agent.firmware.trust.verify_signed_set`."""
        return dict(self._state)

    def newest(self, product: str) -> Accepted | None:
        """The newest set accepted for ``product``, if any."""
        return self._state.get(product)

    async def accept(self, *, product: str, sequence: int, digest: str, set_id: str) -> bool:
        """Check again under the lock and persist; True if the state moved forward."""
        async with self._lock:
            newer = check_sequence(
                self._state, product=product, sequence=sequence, digest=digest, set_id=set_id
            )
            if not newer:
                return False
            state = {**self._state, product: Accepted(sequence, digest, set_id)}
            await asyncio.to_thread(write_atomic, self._path, _encode(state))
            self._state = state
            return True


def _encode(state: Mapping[str, Accepted]) -> bytes:
    body = {"schema": STATE_SCHEMA, "products": {p: asdict(a) for p, a in sorted(state.items())}}
    return json.dumps(body, indent=1, sort_keys=True).encode("utf-8")


def _decode(raw: bytes, path: Path) -> dict[str, Accepted]:
    try:
        body: Any = json.loads(raw)
        schema = body.get("schema")
        products: Any = body["products"] if schema == STATE_SCHEMA else None
        return {
            product: Accepted(int(item["sequence"]), str(item["digest"]), str(item["set_id"]))
            for product, item in products.items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise refuse(Reason.STORAGE_ERROR, f"anti-rollback state {path} is unreadable: {exc!r}") \
            from None
