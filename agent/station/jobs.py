"""Jobs (work orders) and their persisted progress: serials handed out, units passed and failed.

A job id is accepted once. The retained job topic redelivers the same job on every reconnect and
restart; that is recognised by id and content digest and changes nothing, so a redelivered job never
runs twice and its counts survive restarts. A new job supersedes the previous one between units.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from typing import Literal

import aiosqlite

from agent.errors import BadMessage
from agent.station.store import StationStore
from agent.wire.messages import Job, JobProgress

JobState = Literal["active", "complete", "exhausted", "superseded"]


def job_digest(job: Job) -> str:
    """Content digest of a job, independent of key order and whitespace on the wire."""
    return hashlib.sha256(job.model_dump_json(by_alias=True).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class JobView:
    """A job and its progress as last committed."""

    job: Job
    state: JobState
    next_serial: int
    passed: int
    failed: int

    @property
    def runnable(self) -> bool:
        """True while the job wants more units and has serials left."""
        return self.state == "active"

    def progress(self) -> JobProgress:
        """The status view of this job."""
        return JobProgress(job_id=self.job.job_id, product=self.job.product,
                           firmware_set_id=self.job.set_id,
                           quantity=self.job.quantity, passed=self.passed, failed=self.failed,
                           state=self.state)


@dataclass(frozen=True, slots=True)
class InterruptedUnit:
    """A unit that had a serial when the station stopped without finishing it."""

    slot: str
    job_id: str
    serial: str
    chip_uid: str | None
    started_at: float
    manifest_digest: str


class JobBook:
    """Accepts jobs, hands out serials and counts units, all in the station database."""

    def __init__(self, store: StationStore, *, station_id: str) -> None:
        self._store = store
        self._station_id = station_id
        self.current: JobView | None = None
        self.changed = asyncio.Event()
        # The slots of a panel ask for serials at the same moment; each must see the count the
        # previous one left, not the view from before its transaction committed.
        self._serials = asyncio.Lock()

    async def load(self) -> None:
        """Restore the current job after a restart."""
        row = await self._store.fetchone(
            "SELECT payload, state, next_serial, passed, failed FROM jobs "
            "WHERE state IN ('active', 'complete', 'exhausted') "
            "ORDER BY received_at DESC LIMIT 1")
        if row is not None:
            job = Job.model_validate_json(row[0])
            self.current = JobView(job, row[1], row[2], row[3], row[4])

    async def accept(self, job: Job) -> bool:
        """Take a validated job; True when it is new, False for a redelivery of a known job.

        Raises BadMessage when the job is for another station or reuses a known id with other
        content (a replay or a plant-side mistake: either way, not something to program).
        """
        if job.station is not None and job.station != self._station_id:
            raise BadMessage("wrong_station",
                             f"job is for station {job.station}, this is {self._station_id}",
                             ref=job.job_id)
        digest = job_digest(job)
        async with self._store.transaction() as tx:
            async with tx.execute("SELECT digest FROM jobs WHERE job_id = ?",
                                  (job.job_id,)) as cursor:
                known = await cursor.fetchone()
            if known is not None:
                if known[0] != digest:
                    raise BadMessage("job_id_reused",
                                     f"job id {job.job_id} was already received with other "
                                     "content", ref=job.job_id)
                return False
            await tx.execute("UPDATE jobs SET state = 'superseded' WHERE state = 'active'")
            await tx.execute(
                "INSERT INTO jobs (job_id, digest, payload, state, next_serial, received_at) "
                "VALUES (?, ?, ?, 'active', ?, ?)",
                (job.job_id, digest, job.model_dump_json(by_alias=True), job.serials.first,
                 time.time()))
        self.current = JobView(job, "active", job.serials.first, 0, 0)
        self.changed.set()
        return True

    async def take_serial(self, *, slot: str, chip_uid: str | None,
                          manifest_digest: str) -> str | None:
        """Hand the next serial of the current job to the unit in ``slot``; None when used up.

        The serial is consumed durably before anything unit-specific is written to the board, so
        a serial is never issued twice, even across a crash.
        """
        async with self._serials:
            return await self._take_serial(slot=slot, chip_uid=chip_uid,
                                           manifest_digest=manifest_digest)

    async def _take_serial(self, *, slot: str, chip_uid: str | None,
                           manifest_digest: str) -> str | None:
        view = self.current
        if view is None or not view.runnable:
            return None
        if view.next_serial > view.job.serials.last:
            return None
        serial = view.job.serials.format(view.next_serial)
        async with self._store.transaction() as tx:
            await tx.execute("UPDATE jobs SET next_serial = next_serial + 1 WHERE job_id = ?",
                             (view.job.job_id,))
            await tx.execute(
                "INSERT OR REPLACE INTO units_in_progress (slot, job_id, serial, chip_uid, "
                "started_at, manifest_digest) VALUES (?, ?, ?, ?, ?, ?)",
                (slot, view.job.job_id, serial, chip_uid, time.time(), manifest_digest))
        self.current = JobView(view.job, view.state, view.next_serial + 1, view.passed,
                               view.failed)
        return serial

    async def count_unit(self, tx: aiosqlite.Connection, *, job_id: str, slot: str,
                         passed: bool) -> None:
        """Inside ``tx`` (the one that stores the record): count the unit, close the slot's unit.

        The in-memory view and ``changed`` follow only once ``tx`` has committed.
        """
        column = "passed" if passed else "failed"
        await tx.execute(f"UPDATE jobs SET {column} = {column} + 1 WHERE job_id = ?",  # noqa: S608
                         (job_id,))
        await tx.execute("DELETE FROM units_in_progress WHERE slot = ?", (slot,))
        async with tx.execute("SELECT payload, state, next_serial, passed, failed FROM jobs "
                              "WHERE job_id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return
        job = Job.model_validate_json(row[0])
        state: JobState = row[1]
        if state == "active" and row[3] >= job.quantity:
            state = "complete"
        elif state == "active" and row[2] > job.serials.last:
            state = "exhausted"
        if state != row[1]:
            await tx.execute("UPDATE jobs SET state = ? WHERE job_id = ?", (state, job_id))
        view = JobView(job, state, row[2], row[3], row[4])

        def committed() -> None:  # the view changes with the database, not before it
            if self.current is not None and self.current.job.job_id == job_id:
                self.current = view
            self.changed.set()

        self._store.after_commit(committed)

    async def interrupted(self) -> list[InterruptedUnit]:
        """Units that were under way when the station last stopped."""
        rows = await self._store.fetchall(
            "SELECT slot, job_id, serial, chip_uid, started_at, manifest_digest "
            "FROM units_in_progress")
        return [InterruptedUnit(*row) for row in rows]

    async def job(self, job_id: str) -> Job | None:
        """Any job this station has received, by id."""
        row = await self._store.fetchone("SELECT payload FROM jobs WHERE job_id = ?", (job_id,))
        return Job.model_validate_json(row[0]) if row else None
