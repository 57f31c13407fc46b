"""RolloutManager: what the station calls to take in signed sets and to program only staged ones.

Sets arrive with :meth:`RolloutManager.submit`, are verified at once and prefetched in the
background while the line keeps programming with the active set. A staged set becomes active
only between units: the station wraps every unit in ``async with manager.unit():`` and activation
waits until no unit is in progress. A job asks :meth:`job_set` for its set and gets either
:class:`Ready` (program with this) or :class:`Waiting` (say why in the status; program nothing).
State is persisted after every step, so a restart keeps the active set.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from agent.errors import FirmwareSetError
from agent.firmware.antirollback import AntiRollbackStore
from agent.firmware.imagestore import ImageStore
from agent.firmware.reasons import Reason, refuse
from agent.firmware.rollout import (
    HOLDS_IMAGES,
    Ready,
    RolloutFile,
    RolloutSummary,
    SetState,
    SetStatus,
    Waiting,
    advance,
    claimed_set_id,
    describe_verified,
    waiting_for,
)
from agent.firmware.trust import TrustSection, VerifiedSet, check_validity, verify_signed_set

OnChange = Callable[[SetStatus], None]
MAX_REJECTS = 8


def utc_now() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


class RolloutManager:
    """Firmware sets of one station, per product: pending, active, previous (see module doc)."""

    def __init__(
        self, *, trust: TrustSection, images: ImageStore, antirollback: AntiRollbackStore,
        state_dir: Path, on_change: OnChange | None = None, clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._trust = trust
        self._images = images
        self._antirollback = antirollback
        self._file = RolloutFile(state_dir)
        self._on_change = on_change
        self._clock = clock
        self._statuses: dict[str, SetStatus] = {}
        self._verified: dict[str, VerifiedSet] = {}
        self._rejects: list[SetStatus] = []
        self._active: dict[str, str] = {}
        self._previous: dict[str, str] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cond = asyncio.Condition()
        self._save_lock = asyncio.Lock()
        self._units = 0
        self._group = asyncio.TaskGroup()

    async def __aenter__(self) -> RolloutManager:
        await self._group.__aenter__()
        await self._restore()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in self._tasks.values():
            task.cancel()
        # The body's own exception propagates as it is; a failed background task (a bug)
        # still surfaces from the group.
        await self._group.__aexit__(None, None, None)

    # ---- what the station reads -------------------------------------------------------------

    def status(self, set_id: str) -> SetStatus | None:
        """The set's current status, if the station knows it."""
        return self._statuses.get(set_id)

    def staged(self, set_id: str) -> bool:
        """Whether every image of the set is verified in the cache (staged or active)."""
        status = self._statuses.get(set_id)
        return status is not None and status.state in (SetState.STAGED, SetState.ACTIVE)

    def active_set(self, product: str) -> VerifiedSet | None:
        """The set the line programs for ``product``."""
        set_id = self._active.get(product)
        return self._verified.get(set_id) if set_id else None

    def summary(self) -> RolloutSummary:
        """For the ``rollout`` field of the station's status."""
        sets = (*self._statuses.values(), *self._rejects)
        return RolloutSummary(active=dict(self._active), previous=dict(self._previous),
                              sets=tuple(sorted(sets, key=lambda s: s.at))[-64:])

    # ---- what the station does ----------------------------------------------------------------

    async def submit(self, raw: bytes, source_topic: str) -> SetStatus:
        """Take a signed set from ``source_topic``; returns its status (failed if refused)."""
        now = self._clock()
        try:
            verified = verify_signed_set(raw, self._trust, now=now)
            known = self._statuses.get(verified.set_id)
            if known and known.digest == verified.digest and known.state != SetState.FAILED:
                return known  # a retained set delivered again (reconnect, restart)
            m = verified.manifest
            await self._antirollback.accept(product=m.product, sequence=m.sequence,
                                            digest=verified.digest, set_id=m.set_id)
            await asyncio.to_thread(self._file.save_signed, verified.digest, raw)
        except FirmwareSetError as exc:
            received = SetStatus(set_id=exc.set_id or claimed_set_id(raw), state=SetState.RECEIVED,
                                 source_topic=source_topic, at=now)
            failed = advance(received, SetState.FAILED, at=now, code=exc.code, reason=exc.reason)
            self._emit(received)
            self._rejects = [*self._rejects, failed][-MAX_REJECTS:]
            self._emit(failed)
            return failed
        status = describe_verified(verified, source_topic, now)
        self._emit(status)
        self._verified[verified.set_id] = verified
        await self._set(advance(status, SetState.VERIFIED, at=now))
        await self._supersede_pending(verified)
        self._spawn(verified.set_id, self._prefetch(verified.set_id))
        return self._statuses[verified.set_id]

    @asynccontextmanager
    async def unit(self) -> AsyncIterator[None]:
        """Hold for the duration of one unit: no set is activated or rolled back meanwhile."""
        async with self._cond:
            self._units += 1
        try:
            yield
        finally:
            async with self._cond:
                self._units -= 1
                self._cond.notify_all()
            self._spawn("activate", self._activate_quietly())

    async def activate_pending(self, *, between_units: bool = True) -> list[SetStatus]:
        """Activate staged sets whose policy allows it now (immediate, or their time came)."""
        if not between_units:
            return []
        async with self._cond:
            if self._units:
                return []  # the unit's exit tries again
            due = [s.set_id for s in self._statuses.values()
                   if s.state == SetState.STAGED and self._due(s, job_boundary=False)]
            return [await self._activate_locked(set_id) for set_id in due]

    async def job_set(self, set_id: str) -> Ready | Waiting:
        """The job's set if it may be programmed now (activating it at this job boundary)."""
        status = self._statuses.get(set_id)
        if status is None:
            return Waiting(set_id, "set_unknown", f"set {set_id} has not been received")
        if status.state == SetState.STAGED:
            if not self._due(status, job_boundary=True):
                return Waiting(set_id, "activation_scheduled",
                               f"set {set_id} activates at {status.activate_at}")
            async with self._cond:
                if self._units:
                    return Waiting(set_id, "unit_in_progress", "a unit is in progress")
                status = await self._activate_locked(set_id)
        if status.state != SetState.ACTIVE:
            return waiting_for(status)
        verified = self._verified[set_id]
        try:
            check_validity(verified.manifest, self._clock())
        except FirmwareSetError as exc:
            return Waiting(set_id, exc.code, exc.reason)
        paths = {i.name: self._images.path_for(i) for i in verified.manifest.images}
        missing = sorted(name for name, path in paths.items() if not path.exists())
        if missing:
            return Waiting(set_id, Reason.CACHE_MISSING, f"images not in the cache: {missing}")
        return Ready(verified, paths)

    async def image_bytes(self, ready: Ready) -> dict[str, bytes]:
        """Every image of a ready set, read from the cache and checked once more."""
        set_id = ready.verified.set_id
        return {spec.name: await self._images.read_verified(spec, set_id=set_id)
                for spec in ready.verified.manifest.images}

    async def rollback(self, product: str | None = None) -> SetStatus:
        """Make the previous set of ``product`` active again, between units."""
        product = product or _only(self._active, "give the product to roll back")
        previous = self._previous.get(product)
        if previous is None or previous not in self._verified:
            raise refuse(Reason.NO_PREVIOUS, f"no previous set of {product} to roll back to")
        verified = self._verified[previous]
        check_validity(verified.manifest, self._clock())
        for spec in verified.manifest.images:
            await self._images.fetch(spec, set_id=previous)  # from the cache; never re-accepted
        async with self._cond:
            await self._cond.wait_for(lambda: self._units == 0)
            return await self._activate_locked(previous, why="rolled back")

    # ---- inside ---------------------------------------------------------------------------------

    def _due(self, status: SetStatus, *, job_boundary: bool) -> bool:
        if status.activation == "immediate":
            return True
        if status.activation == "at":
            return status.activate_at is not None and self._clock() >= status.activate_at
        return job_boundary

    async def _activate_locked(self, set_id: str, *, why: str = "replaced") -> SetStatus:
        """Make ``set_id`` active for its product; the caller holds the condition, no unit runs."""
        now = self._clock()
        product = self._verified[set_id].manifest.product
        old = self._active.get(product)
        if old is not None and old != set_id:
            await self._set(advance(self._statuses[old], SetState.SUPERSEDED, at=now,
                                    code=Reason.SUPERSEDED, reason=f"{why} by {set_id}"))
            self._previous[product] = old
        self._active[product] = set_id
        await self._evict()  # pruned before "active" is announced: observers see a settled cache
        return await self._set(advance(self._statuses[set_id], SetState.ACTIVE, at=now))

    async def _activate_quietly(self) -> None:
        await self.activate_pending()

    async def _prefetch(self, set_id: str) -> None:
        """Download every image into the cache, then stage (and maybe activate) the set."""
        verified = self._verified[set_id]
        images = verified.firmware_set.ordered_images()
        self._images.register(set_id, images)
        await self._set(advance(self._statuses[set_id], SetState.PREFETCHING, at=self._clock()))
        for count, spec in enumerate(images, start=1):
            try:
                await self._images.fetch(spec, set_id=set_id)
            except FirmwareSetError as exc:
                await self._evict(dropping=set_id)  # its images go before anyone hears
                await self._set(advance(self._statuses[set_id], SetState.FAILED,
                                        at=self._clock(), code=exc.code, reason=exc.reason))
                return
            await self._set(self._statuses[set_id].model_copy(update={"images_ready": count}))
        status = await self._set(advance(self._statuses[set_id], SetState.STAGED,
                                         at=self._clock()))
        if status.activation == "at" and status.activate_at is not None:
            self._spawn(f"at:{set_id}", self._activate_at(status.activate_at))
        await self.activate_pending()

    async def _activate_at(self, when: datetime) -> None:
        await asyncio.sleep(max(0.0, (when - self._clock()).total_seconds()))
        await self.activate_pending()

    async def _supersede_pending(self, newer: VerifiedSet) -> None:
        """A newer set of a product replaces any set of it that is still on its way."""
        waiting = (SetState.VERIFIED, SetState.PREFETCHING, SetState.STAGED)
        for status in list(self._statuses.values()):
            if (status.product == newer.manifest.product and status.set_id != newer.set_id
                    and status.state in waiting):
                task = self._tasks.pop(status.set_id, None)
                if task is not None:
                    task.cancel()
                await self._set(advance(status, SetState.SUPERSEDED, at=self._clock(),
                                        code=Reason.SUPERSEDED,
                                        reason=f"replaced by {newer.set_id}"))

    async def _evict(self, *, dropping: str | None = None) -> None:
        """Keep images and signed bytes of active, previous and pending sets only."""
        keep_ids = {*self._active.values(), *self._previous.values()} | {
            s.set_id for s in self._statuses.values()
            if s.state in (SetState.VERIFIED, SetState.PREFETCHING, SetState.STAGED)}
        keep_ids.discard(dropping or "")
        kept = [self._verified[i] for i in keep_ids if i in self._verified]
        await self._images.retain(spec.sha256 for v in kept for spec in v.manifest.images)
        await asyncio.to_thread(self._file.forget_signed, {v.digest for v in kept})

    async def _set(self, status: SetStatus) -> SetStatus:
        """Record and report a status (no await in between), then persist the latest state."""
        self._statuses[status.set_id] = status
        self._emit(status)
        async with self._save_lock:  # the summary is taken inside, so a later save never loses
            await asyncio.to_thread(self._file.save, self.summary())
        return status

    def _emit(self, status: SetStatus) -> None:
        if self._on_change is not None:
            self._on_change(status)

    def _spawn(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        task = self._group.create_task(work, name=f"rollout:{name}")
        self._tasks[name] = task
        task.add_done_callback(lambda t: self._tasks.pop(name, None) if
                               self._tasks.get(name) is t else None)

    async def _restore(self) -> None:
        """Reload persisted state; re-verify every kept set from its signed bytes."""
        saved = await asyncio.to_thread(self._file.load)
        self._active, self._previous = dict(saved.active), dict(saved.previous)
        for status in saved.sets:
            await self._restore_one(status)
        await self.activate_pending()

    async def _restore_one(self, status: SetStatus) -> None:
        if status.state not in HOLDS_IMAGES or status.digest is None:
            self._statuses[status.set_id] = status
            return
        try:
            raw = await asyncio.to_thread(self._file.load_signed, status.digest)
            verified = verify_signed_set(raw, self._trust, now=self._clock(), check_window=False)
        except FirmwareSetError as exc:  # e.g. its key was revoked in the configuration since
            await self._set(status.model_copy(update={
                "state": SetState.FAILED, "code": exc.code, "reason": exc.reason}))
            for table in (self._active, self._previous):
                if table.get(status.product or "") == status.set_id:
                    del table[status.product or ""]
            return
        self._verified[status.set_id] = verified
        if status.state in (SetState.VERIFIED, SetState.PREFETCHING):
            self._statuses[status.set_id] = status.model_copy(update={"state": SetState.VERIFIED})
            self._spawn(status.set_id, self._prefetch(status.set_id))
            return
        self._statuses[status.set_id] = status
        if status.state == SetState.STAGED and status.activate_at is not None:
            self._spawn(f"at:{status.set_id}", self._activate_at(status.activate_at))


def _only(table: dict[str, str], message: str) -> str:
    if len(table) != 1:
        raise refuse(Reason.NO_PREVIOUS, message)
    return next(iter(table))
