"""Serials of a panel: every slot's unit of one cycle gets its own, durably, even when they ask at
the same moment (the slots of a panel run their units concurrently)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.station.jobs import JobBook
from agent.station.store import StationStore
from agent.wire.messages import Job
from tests.helpers import job_payload


async def test_slots_asking_at_once_never_share_a_serial(tmp_path: Path) -> None:
    store = await StationStore.open(tmp_path / "station.db")
    try:
        book = JobBook(store, station_id="st-test")
        await book.accept(Job.model_validate(job_payload(job_id="wo-1", station="st-test",
                                                         units=4)))
        serials = await asyncio.gather(*(
            book.take_serial(slot=slot, chip_uid=None, manifest_digest="d") for slot in "abcd"))
        assert sorted(serials) == ["SN-001000", "SN-001001", "SN-001002", "SN-001003"]
        restarted = JobBook(store, station_id="st-test")
        await restarted.load()  # what the database says agrees with what was handed out
        assert await restarted.take_serial(slot="a", chip_uid=None,
                                           manifest_digest="d") == "SN-001004"
    finally:
        await store.close()
