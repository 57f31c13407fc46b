"""The unit cycle for one slot: an explicit state machine over the Programmer protocol.

Order (``domain.md``, "One unit, in order"): connect, unique id, serial, invalidate the valid flag,
images in order (bootloader, application, file system, manufacturing), read-back SHA-256 of every
region, valid flag only after all regions verified, optional lock last, disconnect. The fixture
stages around it (clamp, power) belong to :mod:`agent.station.station`. This module never imports
gpiozero, pyocd or aiomqtt.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from agent import __version__
from agent.errors import FailureCode, UnitFailure
from agent.hw.programmer import ConnectOptions, Programmer, Region, ValidFlag
from agent.station import rework
from agent.station.chip_id import check_chip_id
from agent.station.factory import PlantSigner, build_partition, device_certificate
from agent.wire.messages import (
    DeviceCertificate,
    Failure,
    FirmwareSet,
    ImageResult,
    ImageSpec,
    Job,
    StageTiming,
    UnitRecord,
)


class Stage(StrEnum):
    """Stages of a unit, in the order they may happen."""

    CLAMP = "clamp"
    POWER_ON = "power_on"
    CONNECT = "connect"
    IDENTIFY = "identify"
    SERIALIZE = "serialize"
    SIGN = "sign"
    INVALIDATE = "invalidate"
    PROGRAM = "program"
    VERIFY = "verify"
    SET_VALID = "set_valid"
    LOCK = "lock"
    DISCONNECT = "disconnect"
    POWER_OFF = "power_off"


ORDER = list(Stage)
# After a failure only DISCONNECT and POWER_OFF may follow (the way out); otherwise forward only.
EXITS = {Stage.DISCONNECT, Stage.POWER_OFF}


class IllegalTransition(RuntimeError):
    """A bug: the cycle tried to move between stages out of order."""


@dataclass(frozen=True)
class UnitPlan:
    """Everything a unit needs that does not depend on the board.

    ``firmware_set`` comes from a verified signed set whose digest is ``manifest_digest``;
    ``images`` are its image bytes, each checked against the set; ``lock`` is the job's request
    as the set's lock policy allows it.
    """

    job: Job
    set_id: str
    manifest_digest: str
    station_id: str
    firmware_set: FirmwareSet | None = None  # None only for the record of an interrupted unit
    images: dict[str, bytes] = field(default_factory=dict)
    lock: bool = False

    def programmable_set(self) -> FirmwareSet:
        """The set to program; a plan without one is a bug in the caller."""
        if self.firmware_set is None:
            raise IllegalTransition(f"plan of job {self.job.job_id} has no firmware set")
        return self.firmware_set

    def connect_options(self) -> ConnectOptions:
        """How every slot's backend connects: the set's target names, the job's recovery rule."""
        target = self.programmable_set().target
        return ConnectOptions(target=target.pyocd_target or target.bootloader or target.family,
                              swd_target=target.pyocd_target,
                              bootloader_target=target.bootloader,
                              recover_locked=self.job.recover_locked)


@dataclass
class UnitRun:
    """One unit in one slot: its stage, timings, results, and the failure if any."""

    slot: str
    plan: UnitPlan
    record_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    stage: Stage | None = None
    serial: str | None = None
    chip_uid: str | None = None
    failure: UnitFailure | None = None
    aborted: bool = False
    valid_flag_set: bool = False
    locked: bool = False
    recovered_locked_part: bool = False
    signature_id: str | None = None
    device_certificate: DeviceCertificate | None = None
    images: dict[str, ImageResult] = field(default_factory=dict)
    timings: list[StageTiming] = field(default_factory=list)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    _stage_t0: float = 0.0

    def enter(self, stage: Stage) -> None:
        """Move to ``stage``; raises IllegalTransition when that is not the next legal stage."""
        if self.stage is not None:
            forward = ORDER.index(stage) > ORDER.index(self.stage)
            if not forward or (self.failure is not None and stage not in EXITS):
                raise IllegalTransition(f"{self.slot}: {self.stage} -> {stage}")
            self._close_stage(ok=self.failure is None)
        self.stage = stage
        self._stage_t0 = time.perf_counter()

    def _close_stage(self, *, ok: bool) -> None:
        assert self.stage is not None
        elapsed = (time.perf_counter() - self._stage_t0) * 1000
        self.timings.append(StageTiming(stage=self.stage.value, duration_ms=round(elapsed, 3),
                                        ok=ok))

    def fail(self, failure: UnitFailure, *, aborted: bool = False) -> None:
        """Record the first failure; later ones (cleanup after an abort) do not overwrite it."""
        if self.failure is None:
            self.failure = failure
            self.aborted = aborted

    def finish(self) -> None:
        """Close the last stage's timing."""
        if self.stage is not None:
            self._close_stage(ok=self.failure is None)
            self.stage = None

    @property
    def passed(self) -> bool:
        """True when every stage succeeded."""
        return self.failure is None and self.valid_flag_set

    def to_record(self, seq: int, prev_digest: str) -> UnitRecord:
        """The traceability record, with the sequence number and chain link the outbox gave."""
        job = self.plan.job
        failure = None
        if self.failure is not None:
            failure = Failure(code=self.failure.code.value, stage=self.failure.stage,
                              detail=self.failure.detail, region=self.failure.region)
        return UnitRecord(
            record_id=self.record_id, seq=seq, prev_digest=prev_digest,
            station=self.plan.station_id, slot=self.slot,
            job_id=job.job_id, product=job.product, serial=self.serial, chip_uid=self.chip_uid,
            firmware_set_id=self.plan.set_id, manifest_digest=self.plan.manifest_digest,
            images=tuple(self.images.values()), started_at=self.started_at,
            finished_at=datetime.now(UTC), stages=tuple(self.timings),
            outcome="pass" if self.passed else "fail",
            routing="ship" if self.passed else "rework", failure=failure, aborted=self.aborted,
            valid_flag_set=self.valid_flag_set, lock_requested=self.plan.lock, locked=self.locked,
            recovered_locked_part=self.recovered_locked_part,
            device_certificate=self.device_certificate, agent_version=__version__,
        )


# (slot, chip uid, manifest digest) -> the serial, or None when the job has none left
TakeSerial = Callable[[str, str | None, str], Awaitable[str | None]]


def _planned_images(run: UnitRun) -> list[tuple[ImageSpec, bytes]]:
    images = run.plan.programmable_set().ordered_images()
    return [(spec, run.plan.images[spec.name]) for spec in images]


async def _manufacturing(run: UnitRun, programmer: Programmer,
                         signer: PlantSigner | None) -> list[tuple[ImageSpec, bytes]]:
    """The per-unit regions: the partition (signed when the set says so), the certificate."""
    fs = run.plan.programmable_set()
    layout = fs.manufacturing
    if layout is None:
        return []
    now = datetime.now(UTC)
    fields = {"serial": run.serial or "", "chip_uid": run.chip_uid or "",
              "product": fs.product, "job_id": run.plan.job.job_id,
              "station": run.plan.station_id, "slot": run.slot,
              "programmed_at": now.isoformat(timespec="seconds")}
    if layout.signing == "required" or layout.device_certificate is not None:
        run.enter(Stage.SIGN)
    partition = await build_partition(layout=layout, job=run.plan.job, values=fields,
                                      at=int(now.timestamp()), stage=str(run.stage),
                                      signer=signer)
    run.signature_id = partition.signature_id
    regions = [(partition.spec, partition.data)]
    if layout.device_certificate is not None:

        async def read(address: int, size: int) -> bytes:
            return await programmer.read(Region("device-key", address, size))

        spec, blob, run.device_certificate = await device_certificate(
            spec=layout.device_certificate, job=run.plan.job, serial=fields["serial"],
            chip_uid=fields["chip_uid"], read=read, signer=signer, stage=str(run.stage))
        regions.append((spec, blob))
    return regions


def _result(spec: ImageSpec, signature_id: str | None) -> ImageResult:
    return ImageResult(name=spec.name, role=spec.role, version=spec.version,
                       address=spec.address, size=spec.size, sha256=spec.sha256,
                       key_ref=spec.key_ref,
                       signature_id=signature_id if spec.name == "manufacturing" else None)


async def program_unit(run: UnitRun, programmer: Programmer, *, take_serial: TakeSerial,
                       signer: PlantSigner | None = None) -> None:
    """Run the slot's stages from CONNECT through LOCK; raises UnitFailure or ProgrammerError.

    ``signer`` is the plant signing service (a set that requires signed factory data fails the
    unit without it, before anything is written)."""
    job = run.plan.job
    fs = run.plan.programmable_set()
    run.enter(Stage.CONNECT)
    connection = await programmer.connect(run.plan.connect_options())
    run.recovered_locked_part = connection.recovered_locked_part

    run.enter(Stage.IDENTIFY)
    run.chip_uid = await programmer.read_unique_id()
    check_chip_id(run.chip_uid, expected_bytes=connection.uid_bytes)

    run.enter(Stage.SERIALIZE)
    run.serial = await take_serial(run.slot, run.chip_uid, run.plan.manifest_digest)
    if run.serial is None:
        raise UnitFailure(code=FailureCode.SERIALS_EXHAUSTED, stage=Stage.SERIALIZE,
                          detail=f"job {job.job_id} has no serials left")
    planned = _planned_images(run)
    planned += await _manufacturing(run, programmer, signer)
    for spec, _ in planned:
        run.images[spec.name] = _result(spec, run.signature_id)

    flag = ValidFlag(kind=fs.valid_flag.kind, address=fs.valid_flag.address,
                     value=fs.valid_flag.value)
    run.enter(Stage.INVALIDATE)  # a half-programmed board must never look valid
    from_rework = await rework.programmed_before(programmer, flag)
    await programmer.erase(Region("valid-flag", flag.address, 4))

    run.enter(Stage.PROGRAM)
    written = []
    for spec, data in planned:
        if from_rework and await _already_there(run, programmer, spec):
            continue
        await programmer.write(Region(spec.name, spec.address, spec.size), data)
        written.append((spec, data))

    run.enter(Stage.VERIFY)
    await _verify(run, programmer, written)

    run.enter(Stage.SET_VALID)
    await programmer.set_valid_flag(flag)
    run.valid_flag_set = True

    if run.plan.lock:
        run.enter(Stage.LOCK)
        await programmer.lock()
        run.locked = True


async def _already_there(run: UnitRun, programmer: Programmer, spec: ImageSpec) -> bool:
    """A reworked board's region that already holds the image: its one read is its verification."""
    if spec.role in rework.ALWAYS_WRITTEN_ROLES:
        return False
    digest = await rework.region_digest(programmer, Region(spec.name, spec.address, spec.size))
    if digest != spec.sha256:
        return False
    run.images[spec.name] = run.images[spec.name].model_copy(
        update={"readback_sha256": digest, "verified": True})
    return True


async def _verify(run: UnitRun, programmer: Programmer,
                  planned: list[tuple[ImageSpec, bytes]]) -> None:
    """Read every region back; record each result; fail naming every region that differs."""
    bad = []
    for spec, _ in planned:
        readback = await programmer.read(Region(spec.name, spec.address, spec.size))
        digest = hashlib.sha256(readback).hexdigest()
        ok = digest == spec.sha256
        run.images[spec.name] = run.images[spec.name].model_copy(
            update={"readback_sha256": digest, "verified": ok})
        if not ok:
            bad.append(spec.name)
    if bad:
        raise UnitFailure(code=FailureCode.VERIFY_MISMATCH, stage=Stage.VERIFY,
                          detail=f"read-back SHA-256 differs in {', '.join(bad)}", region=bad[0])
