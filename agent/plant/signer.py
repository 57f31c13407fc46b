"""The signing service's decisions: may this station have this unit's factory data signed?

Checks, in order: the job is known; the station may work on it (the job names no station or
this one) and the product is the job's; the serial is one of the job's range; the serial was
never signed for another chip; the same chip, serial and digest again get the stored signature
(a station that died after being answered asks again); and a chip new to the job fits the
quota. The quota counts distinct chips per job, at most ``quantity + rework allowance``: a
board retried under a new serial after a crash is still one unit. Every decision is an audit
row; decisions are taken one at a time (the store's rows are the state).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, TypeVar

from pydantic import ValidationError

from agent.errors import AgentError
from agent.firmware.crypto import Alg
from agent.plant.signer_store import AuditRow, SignatureRow, SignerStore
from agent.wire.messages import Job
from agent.wire.signing import RefusalCode, SignRequest, SignResponse


class Refused(AgentError):
    """The service will not sign; ``code`` is the stable reason, the message the sentence."""

    def __init__(self, code: RefusalCode, reason: str) -> None:
        self.code: RefusalCode = code
        self.reason = reason
        super().__init__(f"{code}: {reason}")


class TokenKey(Protocol):
    """A signing key on a token (:class:`agent.plant.pkcs11_signer.Pkcs11Signer`)."""

    alg: Alg

    def sign(self, data: bytes) -> bytes:
        """64-byte signature of ``data``."""
        ...


JobLookup = Callable[[str], Job | None]
T = TypeVar("T")


def job_folder(folder: Path) -> JobLookup:
    """Jobs as the plant publishes them, one ``JOB_ID.json`` per job, read on every request
    (a new job needs no restart)."""

    def lookup(job_id: str) -> Job | None:
        path = folder / f"{job_id}.json"
        try:
            return Job.model_validate_json(path.read_bytes())
        except (OSError, ValidationError):
            return None

    return lookup


@dataclass(frozen=True)
class Quota:
    """How many units a job may have signed, and how many it has."""

    job_id: str
    quantity: int
    rework_allowance: int
    used: int

    @property
    def limit(self) -> int:
        """The overbuild limit."""
        return self.quantity + self.rework_allowance


def serial_number(job: Job, serial: str) -> int | None:
    """The number of ``serial`` in the job's range, or None when it is not one of them."""
    serials = job.serials
    digits = serial.removeprefix(serials.prefix) if serial.startswith(serials.prefix) else ""
    if len(digits) != serials.width or not digits.isdigit():
        return None
    number = int(digits)
    return number if serials.first <= number <= serials.last else None


class SigningService:
    """Decides, signs with the token key, and writes the audit row; one decision at a time."""

    def __init__(self, *, store: SignerStore, jobs: JobLookup, key: TokenKey, key_ref: str,
                 rework_allowance: int) -> None:
        self._store = store
        self._jobs = jobs
        self._key = key
        self.key_ref = key_ref
        self._allowance = rework_allowance
        self._lock = asyncio.Lock()
        # PKCS#11 sessions are not for concurrent use: the token is driven from one thread.
        self._token_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="token")

    def close(self) -> None:
        """Stop the token thread."""
        self._token_thread.shutdown(wait=True)

    @property
    def store(self) -> SignerStore:
        """Where decisions go (the certifier shares it)."""
        return self._store

    @property
    def decisions(self) -> asyncio.Lock:
        """Held while one decision is taken: the store's rows are the state."""
        return self._lock

    async def on_token(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the token's one thread."""
        return await asyncio.get_running_loop().run_in_executor(self._token_thread, work)

    async def quota(self, job_id: str) -> Quota | None:
        """The job's quota and its use, or None for an unknown job."""
        job = self._jobs(job_id)
        if job is None:
            return None
        used = len(await self._store.chips_signed(job_id))
        return Quota(job_id=job_id, quantity=job.quantity, rework_allowance=self._allowance,
                     used=used)

    async def sign(self, request: SignRequest, *, station: str) -> SignResponse:
        """Sign or raise Refused; either way the decision is in the audit trail first."""
        async with self._lock:
            audit = AuditRow(station=station, job_id=request.job_id, product=request.product,
                             serial=request.serial, chip_uid=request.chip_uid,
                             digest=request.digest, decision="refused")
            try:
                repeat = await self._check(request, station=station)
            except Refused as refusal:
                await self._store.record(replace(audit, code=refusal.code,
                                                 reason=refusal.reason))
                raise
            if repeat is not None:
                await self._store.record(replace(audit, decision="repeated",
                                                 key_ref=repeat.key_ref,
                                                 signature_id=repeat.signature_id))
                return _response(repeat, repeated=True)
            loop = asyncio.get_running_loop()
            try:
                signature = await loop.run_in_executor(self._token_thread, self._key.sign,
                                                       bytes.fromhex(request.digest))
            except AgentError as exc:  # the token's own error, a sentence
                await self._store.record(replace(audit, code="token_error", reason=str(exc)))
                raise Refused("token_error", str(exc)) from None
            row = SignatureRow(signature_id=uuid.uuid4().hex, product=request.product,
                               job_id=request.job_id, serial=request.serial,
                               chip_uid=request.chip_uid, digest=request.digest,
                               station=station, key_ref=self.key_ref, alg=self._key.alg,
                               signature=signature.hex())
            await self._store.record(replace(audit, decision="signed", key_ref=row.key_ref,
                                             signature_id=row.signature_id), row)
            return _response(row, repeated=False)

    async def _check(self, request: SignRequest, *, station: str) -> SignatureRow | None:
        await self.check_unit(job_id=request.job_id, product=request.product,
                              serial=request.serial, chip_uid=request.chip_uid, station=station)
        earlier = await self._store.signatures_for_serial(request.product, request.serial)
        return next((row for row in earlier if row.digest == request.digest
                     and row.job_id == request.job_id and row.chip_uid == request.chip_uid),
                    None)

    async def check_unit(self, *, job_id: str, product: str, serial: str, chip_uid: str,
                         station: str) -> None:
        """Refused unless this station may have this unit's data signed or certified now."""
        job = self._jobs(job_id)
        if job is None:
            raise Refused("unknown_job", f"job {job_id} is not known to the signing service")
        if job.station is not None and job.station != station:
            raise Refused("station_not_allowed", f"job {job.job_id} belongs to station "
                                                 f"{job.station}, not {station}")
        if product != job.product:
            raise Refused("wrong_product", f"job {job.job_id} builds {job.product}, not "
                                           f"{product}")
        if serial_number(job, serial) is None:
            raise Refused("serial_outside_job", f"serial {serial} is not in job "
                                                f"{job.job_id}'s range")
        bound = [row.chip_uid for row in await self._store.signatures_for_serial(product, serial)]
        bound += [row.chip_uid for row in await self._store.certificates_for_serial(product,
                                                                                      serial)]
        for other in bound:
            if other != chip_uid:
                raise Refused("serial_bound_to_other_chip",
                              f"serial {serial} is already signed for chip {other}")
        chips = await self._store.chips_signed(job.job_id)
        limit = job.quantity + self._allowance
        if chip_uid not in chips and len(chips) >= limit:
            raise Refused("quota_exhausted", f"job {job.job_id} has used its quota of {limit} "
                                             f"units ({job.quantity} + {self._allowance} "
                                             "rework)")


def _response(row: SignatureRow, *, repeated: bool) -> SignResponse:
    alg: Alg = "ed25519" if row.alg == "ed25519" else "ecdsa-p256"
    return SignResponse(signature_id=row.signature_id, key_ref=row.key_ref, alg=alg,
                        signature=row.signature, repeated=repeated)
