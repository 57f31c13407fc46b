"""The manufacturing partition of one unit: the set's factory-data layout, signed when it must be.

With a field layout in the set, the partition is TLV factory data (:mod:`agent.firmware.
factory_data`); with ``signing: required`` the station asks the plant signing service for the
signature first and writes nothing when there is none. Without a layout it is the version-1
JSON blob of :mod:`agent.station.mfgdata`, which no one signs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent.errors import FailureCode, UnitFailure
from agent.firmware import factory_data
from agent.station import mfgdata
from agent.wire.messages import ImageSpec, Job, ManufacturingSpec
from agent.wire.signing import SignRequest, SignResponse

UNSIGNED = "unsigned:station-generated"
SignFn = Callable[[SignRequest], Awaitable[SignResponse]]


@dataclass(frozen=True)
class Partition:
    """The bytes to write, the region spec they are checked against, and who signed them."""

    spec: ImageSpec
    data: bytes
    signature_id: str | None = None


def _image(layout: ManufacturingSpec, data: bytes, *, version: str, key_ref: str) -> ImageSpec:
    return ImageSpec(name="manufacturing", role="manufacturing", address=layout.address,
                     size=layout.size, sha256=hashlib.sha256(data).hexdigest(),
                     version=version, key_ref=key_ref, url="station:generated")


def _serial_number(job: Job, serial: str) -> int:
    return int(serial.removeprefix(job.serials.prefix))


async def build_partition(*, layout: ManufacturingSpec, job: Job, values: dict[str, str],
                          at: int, stage: str, sign: SignFn | None) -> Partition:
    """The partition for one unit; raises UnitFailure when it cannot be made (or signed)."""
    try:
        if not layout.fields:
            blob = mfgdata.build(size=layout.size, fields=values)
            return Partition(_image(layout, blob, version=f"mfgdata-{mfgdata.FORMAT_VERSION}",
                                    key_ref=UNSIGNED), blob)
        unit = factory_data.UnitValues(
            serial=values["serial"], serial_number=_serial_number(job, values["serial"]),
            chip_uid=values["chip_uid"], station=values["station"], slot=values["slot"],
            job=job.job_id, product=job.product, time=at)
        data = factory_data.encode(layout, unit)
        version = f"factory-data-{factory_data.FORMAT}.{layout.format_version}"
        if layout.signing != "required":
            blob = factory_data.partition(size=layout.size, data=data, signature=None)
            return Partition(_image(layout, blob, version=version, key_ref=UNSIGNED), blob)
    except (ValueError, factory_data.FactoryDataError) as exc:
        raise UnitFailure(code=FailureCode.INTERNAL, stage=stage, detail=str(exc),
                          region="manufacturing") from None
    if sign is None:
        raise UnitFailure(code=FailureCode.SIGNER_UNREACHABLE, stage=stage,
                          detail="the set requires signed factory data and this station has "
                                 "no signing service configured ([signer])",
                          region="manufacturing")
    answer = await sign(SignRequest(job_id=job.job_id, product=job.product,
                                    serial=unit.serial, chip_uid=unit.chip_uid,
                                    digest=hashlib.sha256(data).hexdigest()))
    signature = factory_data.Signature(alg=answer.alg, signature=bytes.fromhex(answer.signature),
                                       key_ref=answer.key_ref,
                                       signature_id=answer.signature_id)
    try:
        blob = factory_data.partition(size=layout.size, data=data, signature=signature)
    except factory_data.FactoryDataError as exc:
        raise UnitFailure(code=FailureCode.INTERNAL, stage=stage, detail=str(exc),
                          region="manufacturing") from None
    return Partition(_image(layout, blob, version=version, key_ref=answer.key_ref), blob,
                     signature_id=answer.signature_id)
