"""Rollout on the station: verify, prefetch, stage, activate between units only, roll back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.errors import FirmwareSetError
from agent.firmware.antirollback import AntiRollbackStore
from agent.firmware.imagestore import ImageStore
from agent.firmware.manager import Ready, RolloutManager, Waiting
from agent.firmware.rollout import IllegalTransition, SetState, SetStatus, advance
from agent.firmware.trust import TrustSection
from tests.firmware_support import NOW, Release, image_bytes, image_entry, manifest_dict, trust_of

OWNER = Release("owner")
TOPIC = "fixture/v1/station/st-1/firmware-set"


@dataclass
class Clock:
    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Station:
    """A manager on its own folders plus what it reported."""

    root: Path
    clock: Clock = field(default_factory=Clock)
    events: list[SetStatus] = field(default_factory=list)

    def release(self, set_id: str, sequence: int, *, activation: dict[str, Any] | None = None,
                corrupt: bool = False) -> bytes:
        """A signed set whose images sit on 'offline media' under root/media."""
        media = self.root / "media"
        media.mkdir(parents=True, exist_ok=True)
        images = []
        for n, (name, role) in enumerate((("boot", "bootloader"), ("app", "application"))):
            data = image_bytes(f"{set_id}/{name}", 2048)
            source = media / f"{set_id}-{name}.bin"
            source.write_bytes(data[:-1] + b"!" if corrupt and name == "app" else data)
            images.append(image_entry(name, data, url=source.as_uri(), address=0x10000 * n,
                                      role=role))
        manifest = manifest_dict(set_id=set_id, sequence=sequence, images=images,
                                 activation=activation)
        return OWNER.sign(json.dumps(manifest).encode())

    def states(self, set_id: str) -> list[str]:
        seen = [str(e.state) for e in self.events if e.set_id == set_id]
        return [s for i, s in enumerate(seen) if i == 0 or seen[i - 1] != s]

    @asynccontextmanager
    async def running(self, trust: TrustSection | None = None) -> AsyncIterator[RolloutManager]:
        images = ImageStore(self.root / "images")
        async with images, RolloutManager(
            trust=trust or trust_of(OWNER.trusted()), images=images,
            antirollback=AntiRollbackStore.load(self.root / "anti-rollback.json"),
            state_dir=self.root / "rollout", on_change=self.events.append, clock=self.clock,
        ) as manager:
            yield manager


async def settled(manager: RolloutManager, set_id: str, *states: SetState) -> SetStatus:
    async with asyncio.timeout(10):
        while True:
            status = manager.status(set_id)
            if status is not None and status.state in states:
                return status
            await asyncio.sleep(0.005)


@pytest.fixture
def station(tmp_path: Path) -> Station:
    return Station(tmp_path)


async def test_a_set_goes_from_received_to_active(station: Station) -> None:
    async with station.running() as manager:
        await manager.submit(station.release("s1", 1, activation={"mode": "immediate"}), TOPIC)
        await settled(manager, "s1", SetState.ACTIVE)
        assert station.states("s1") == ["received", "verified", "prefetching", "staged",
                                         "active"]
        assert manager.summary().active == {"widget": "s1"}
        ready = await manager.job_set("s1")
        assert isinstance(ready, Ready)
        images = await manager.image_bytes(ready)
        assert images["app"] == image_bytes("s1/app", 2048)


async def test_a_job_waits_for_its_set_and_activates_it_at_its_start(station: Station) -> None:
    async with station.running() as manager:
        waiting = await manager.job_set("s1")
        assert isinstance(waiting, Waiting)
        assert waiting.code == "set_unknown"
        await manager.submit(station.release("s1", 1), TOPIC)  # default: next_job
        await settled(manager, "s1", SetState.STAGED)
        assert manager.staged("s1")
        assert manager.active_set("widget") is None
        assert isinstance(await manager.job_set("s1"), Ready)
        assert manager.status("s1").state == SetState.ACTIVE  # type: ignore[union-attr]


async def test_activation_never_interrupts_a_unit(station: Station) -> None:
    async with station.running() as manager:
        await manager.submit(station.release("s1", 1, activation={"mode": "immediate"}), TOPIC)
        await settled(manager, "s1", SetState.ACTIVE)
        async with manager.unit():
            await manager.submit(station.release("s2", 2, activation={"mode": "immediate"}),
                                 TOPIC)
            await settled(manager, "s2", SetState.STAGED)
            assert await manager.activate_pending() == []
            waiting = await manager.job_set("s2")
            assert isinstance(waiting, Waiting)
            assert waiting.code == "unit_in_progress"
            await asyncio.sleep(0.05)
            assert manager.active_set("widget").set_id == "s1"  # type: ignore[union-attr]
        await settled(manager, "s2", SetState.ACTIVE)  # right after the unit
        assert manager.status("s1").state == SetState.SUPERSEDED  # type: ignore[union-attr]


async def test_activation_at_a_time(station: Station) -> None:
    at = NOW + timedelta(hours=1)
    async with station.running() as manager:
        raw = station.release("s1", 1, activation={"mode": "at", "at": at.isoformat()})
        await manager.submit(raw, TOPIC)
        await settled(manager, "s1", SetState.STAGED)
        waiting = await manager.job_set("s1")
        assert isinstance(waiting, Waiting)
        assert waiting.code == "activation_scheduled"
        station.clock.now = at
        assert [s.set_id for s in await manager.activate_pending()] == ["s1"]


async def test_a_bad_image_fails_the_set_and_nothing_is_programmed(station: Station) -> None:
    async with station.running() as manager:
        await manager.submit(station.release("s1", 1, corrupt=True), TOPIC)
        failed = await settled(manager, "s1", SetState.FAILED)
        assert failed.code == "hash_mismatch"
        waiting = await manager.job_set("s1")
        assert isinstance(waiting, Waiting)
        assert waiting.code == "hash_mismatch"
        assert not manager.staged("s1")
        assert list((station.root / "images" / "sha256").iterdir()) == []


async def test_refused_sets_are_reported_and_change_nothing(station: Station) -> None:
    async with station.running() as manager:
        stranger = Release("stranger").sign(json.dumps(manifest_dict(set_id="evil")).encode())
        status = await manager.submit(stranger, TOPIC)
        assert (status.set_id, status.state, status.code) == ("evil", "failed", "unknown_key")
        assert manager.status("evil") is None
        assert [s.code for s in manager.summary().sets] == ["unknown_key"]
        await manager.submit(station.release("s2", 2), TOPIC)
        older = await manager.submit(station.release("s1", 1), TOPIC)
        assert older.code == "rollback"


async def test_a_retained_set_seen_again_is_not_reprocessed(station: Station) -> None:
    async with station.running() as manager:
        raw = station.release("s1", 1, activation={"mode": "immediate"})
        await manager.submit(raw, TOPIC)
        await settled(manager, "s1", SetState.ACTIVE)
        count = len(station.events)
        assert (await manager.submit(raw, TOPIC)).state == SetState.ACTIVE
        assert len(station.events) == count


async def test_rollback_returns_to_the_previous_set(station: Station) -> None:
    immediate = {"mode": "immediate"}
    async with station.running() as manager:
        with pytest.raises(FirmwareSetError) as info:
            await manager.rollback("widget")
        assert info.value.code == "no_previous"
        for n in (1, 2, 3):
            await manager.submit(station.release(f"s{n}", n, activation=immediate), TOPIC)
            await settled(manager, f"s{n}", SetState.ACTIVE)
        cached = {p.name for p in (station.root / "images" / "sha256").iterdir()}
        assert len(cached) == 4  # s2 (previous) and s3 (active); s1 evicted
        status = await manager.rollback()
        assert (status.set_id, status.state) == ("s2", SetState.ACTIVE)
        assert isinstance(await manager.job_set("s2"), Ready)
        waiting = await manager.job_set("s3")
        assert isinstance(waiting, Waiting)
        assert waiting.code == "superseded"


async def test_a_restart_keeps_the_active_set(station: Station) -> None:
    async with station.running() as manager:
        await manager.submit(station.release("s1", 1, activation={"mode": "immediate"}), TOPIC)
        await settled(manager, "s1", SetState.ACTIVE)
    async with station.running() as manager:
        assert isinstance(await manager.job_set("s1"), Ready)
    revoked = trust_of(OWNER.trusted(), Release("spare").trusted(), revoked=("owner",))
    async with station.running(revoked) as manager:
        waiting = await manager.job_set("s1")
        assert isinstance(waiting, Waiting)
        assert waiting.code == "revoked_key"


async def test_an_expired_active_set_stops_new_jobs(station: Station) -> None:
    async with station.running() as manager:
        await manager.submit(station.release("s1", 1, activation={"mode": "immediate"}), TOPIC)
        await settled(manager, "s1", SetState.ACTIVE)
        station.clock.now = NOW + timedelta(days=60)
        waiting = await manager.job_set("s1")
        assert isinstance(waiting, Waiting)
        assert waiting.code == "expired"


def test_illegal_transitions_raise() -> None:
    status = SetStatus(set_id="s", state=SetState.RECEIVED, source_topic=TOPIC, at=NOW)
    with pytest.raises(IllegalTransition):
        advance(status, SetState.ACTIVE, at=NOW)
    failed = advance(status, SetState.FAILED, at=NOW, code="x")
    with pytest.raises(IllegalTransition):
        advance(failed, SetState.VERIFIED, at=NOW)
