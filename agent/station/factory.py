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
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from agent.errors import FailureCode, UnitFailure
from agent.firmware import device_key, factory_data
from agent.station import mfgdata
from agent.wire.factory_layout import DeviceCertificateSpec
from agent.wire.messages import DeviceCertificate, ImageSpec, Job, ManufacturingSpec
from agent.wire.signing import CertifyRequest, CertifyResponse, SignRequest, SignResponse

UNSIGNED = "unsigned:station-generated"


class PlantSigner(Protocol):
    """The plant signing service as the unit cycle uses it (:class:`SignerClient`)."""

    async def sign(self, request: SignRequest) -> SignResponse:
        """A signature of the factory data, or UnitFailure."""
        ...

    async def certify(self, request: CertifyRequest) -> CertifyResponse:
        """A certificate for the part's own key, or UnitFailure."""
        ...


ReadRegion = Callable[[int, int], Awaitable[bytes]]


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
                          at: int, stage: str, signer: PlantSigner | None) -> Partition:
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
    request = SignRequest(job_id=job.job_id, product=job.product, serial=unit.serial,
                          chip_uid=unit.chip_uid.lower(), digest=hashlib.sha256(data).hexdigest())
    answer = await _required(signer, stage).sign(request)
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


def _required(signer: PlantSigner | None, stage: str) -> PlantSigner:
    if signer is None:
        raise UnitFailure(code=FailureCode.SIGNER_UNREACHABLE, stage=stage,
                          detail="the set requires the plant signing service and this station "
                                 "has none configured ([signer])", region="manufacturing")
    return signer


async def device_certificate(*, spec: DeviceCertificateSpec, job: Job, serial: str,
                             chip_uid: str, read: ReadRegion, signer: PlantSigner | None,
                             stage: str) -> tuple[ImageSpec, bytes, DeviceCertificate]:
    """Read the part's public key, have the plant certify it; the region to write and the
    record's summary. UnitFailure when the part has no key or the plant issues nothing."""
    try:
        point = device_key.parse_key_record(
            await read(spec.key_address, device_key.KEY_RECORD_BYTES))
    except device_key.DeviceKeyError as exc:
        raise UnitFailure(code=FailureCode.DEVICE_KEY_MISSING, stage=stage, detail=str(exc),
                          region="device-key") from None
    answer = await _required(signer, stage).certify(CertifyRequest(
        job_id=job.job_id, product=job.product, serial=serial, chip_uid=chip_uid.lower(),
        public_key=point.hex()))
    der = bytes.fromhex(answer.certificate)
    cert = x509.load_der_x509_certificate(der)
    if cert.public_key() != ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point):
        raise UnitFailure(code=FailureCode.SIGNING_REFUSED, stage=stage,
                          detail="the plant's certificate is for another key than the part's",
                          region="device-certificate")
    try:
        blob = device_key.cert_region(der, size=spec.cert_size)
    except device_key.DeviceKeyError as exc:
        raise UnitFailure(code=FailureCode.INTERNAL, stage=stage, detail=str(exc),
                          region="device-certificate") from None
    image = ImageSpec(name="device-certificate", role="manufacturing",
                      address=spec.cert_address, size=spec.cert_size,
                      sha256=hashlib.sha256(blob).hexdigest(), version=f"x509-{answer.cert_serial}",
                      key_ref=answer.key_ref, url="station:generated")
    return image, blob, DeviceCertificate(serial=answer.cert_serial, issuer=answer.issuer,
                                          key_ref=answer.key_ref)
