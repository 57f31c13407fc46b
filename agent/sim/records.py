"""Synthetic unit records of the real size, chained as a station chains them (tests, benches)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from agent.station.outbox import Outbox
from agent.station.store import StationStore
from agent.wire.codec import encode
from agent.wire.messages import (
    GENESIS_DIGEST,
    ImageResult,
    StageTiming,
    UnitRecord,
    record_digest,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def unit_record(station: str, seq: int, prev_digest: str, *, key_ref: str = "hsm:release-1",
                serial: str | None = None, outcome: str = "pass", job_id: str = "wo-1",
                set_id: str = "set-1", finished_at: datetime | None = None) -> UnitRecord:
    """A record with four images and a full set of stage timings (about 2 KB)."""
    when = finished_at or T0 + timedelta(seconds=seq)
    images = tuple(ImageResult(name=f"image{i}", role="application", version="1.0.0",
                               address=i << 16, size=65536, sha256=f"{i:02x}" * 32,
                               key_ref=key_ref, readback_sha256=f"{i:02x}" * 32, verified=True)
                   for i in range(4))
    stages = tuple(StageTiming(stage=f"s{i}", duration_ms=1.5, ok=True) for i in range(11))
    passed = outcome == "pass"
    return UnitRecord(
        record_id=uuid.uuid4().hex, seq=seq, prev_digest=prev_digest, station=station, slot="a",
        job_id=job_id, product="p", serial=serial or f"{station}-SN-{seq:07d}",
        chip_uid=f"{station}-{seq:016x}", firmware_set_id=set_id, manifest_digest="cd" * 32,
        images=images, started_at=when - timedelta(seconds=1), finished_at=when, stages=stages,
        outcome="pass" if passed else "fail", routing="ship" if passed else "rework",
        agent_version="sim")


def chain(station: str, count: int, *, first_seq: int = 1,
          prev_digest: str = GENESIS_DIGEST, **fields: object) -> Iterator[bytes]:
    """``count`` encoded records of ``station``, each linked to the one before."""
    for seq in range(first_seq, first_seq + count):
        payload = encode(unit_record(station, seq, prev_digest, **fields))  # type: ignore[arg-type]
        prev_digest = record_digest(payload)
        yield payload


async def fill_outbox(store: StationStore, outbox: Outbox, station: str, count: int) -> None:
    """Append ``count`` records to a station's outbox as the station does (seq and link taken
    in the transaction), in transactions of 1000."""
    done = 0
    while done < count:
        async with store.transaction() as tx:
            for _ in range(min(1000, count - done)):
                record_id = uuid.uuid4().hex

                def build(seq: int, link: str, record_id: str = record_id) -> bytes:
                    return encode(unit_record(station, seq, link).model_copy(
                        update={"record_id": record_id}))

                await outbox.append(tx, record_id=record_id, build=build)
                done += 1
