"""Device certificates through the signing service: the same checks, one per chip and serial.

A unit gets a certificate for the public key its part made only when the signing service would
sign its factory data: known job, this station, this product, the serial in range and bound to
no other chip, quota left (a chip counts once, whether signed, certified or both). The same
serial, chip and key again get the stored certificate again. Every decision is an audit row
(``signature_id`` holds the certificate serial).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import replace

from cryptography.hazmat.primitives.serialization import Encoding

from agent.errors import AgentError
from agent.plant.device_ca import DeviceIntermediate, device_public_key
from agent.plant.signer import Refused, SigningService
from agent.plant.signer_store import AuditRow, CertificateRow
from agent.wire.signing import CertifyRequest, CertifyResponse


class Certifier:
    """Issues device certificates with the intermediate's token key."""

    def __init__(self, *, service: SigningService, ca: DeviceIntermediate,
                 days: int = 365 * 20) -> None:
        self._service = service
        self._ca = ca
        self._days = days
        self.key_ref = ca.key_ref

    async def certify(self, request: CertifyRequest, *, station: str) -> CertifyResponse:
        """A certificate, or Refused; the decision is audited first either way."""
        store = self._service.store
        async with self._service.decisions:
            audit = AuditRow(station=station, job_id=request.job_id, product=request.product,
                             serial=request.serial, chip_uid=request.chip_uid,
                             digest=hashlib.sha256(bytes.fromhex(request.public_key)).hexdigest(),
                             decision="refused")
            try:
                await self._service.check_unit(
                    job_id=request.job_id, product=request.product, serial=request.serial,
                    chip_uid=request.chip_uid, station=station)
                try:
                    key = device_public_key(request.public_key)
                except ValueError:
                    raise Refused("bad_public_key", "the part's public key is no P-256 "
                                                    "point") from None
                earlier = next((row for row in await store.certificates_for_serial(
                    request.product, request.serial) if row.public_key == request.public_key
                    and row.chip_uid == request.chip_uid), None)
                if earlier is not None:
                    await store.record(replace(audit, decision="repeated",
                                               key_ref=earlier.key_ref,
                                               signature_id=earlier.cert_serial))
                    return _response(earlier, repeated=True)
                try:
                    cert = await self._service.on_token(lambda: self._ca.issue(
                        key, serial=request.serial, chip_uid=request.chip_uid,
                        product=request.product, days=self._days, now=dt.datetime.now(dt.UTC)))
                except AgentError as exc:
                    raise Refused("token_error", str(exc)) from None
            except Refused as refusal:
                await store.record(replace(audit, code=refusal.code, reason=refusal.reason))
                raise
            row = CertificateRow(
                cert_serial=f"{cert.serial_number:x}", product=request.product,
                job_id=request.job_id, serial=request.serial, chip_uid=request.chip_uid,
                public_key=request.public_key, der=cert.public_bytes(Encoding.DER).hex(),
                issuer=cert.issuer.rfc4514_string(), station=station, key_ref=self.key_ref)
            await store.record(replace(audit, decision="certified", key_ref=self.key_ref,
                                       signature_id=row.cert_serial), certificate=row)
            return _response(row, repeated=False)


def _response(row: CertificateRow, *, repeated: bool) -> CertifyResponse:
    return CertifyResponse(certificate=row.der, cert_serial=row.cert_serial, issuer=row.issuer,
                           key_ref=row.key_ref, repeated=repeated)
