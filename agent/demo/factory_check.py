"""The demo's host-side check of every unit's factory data, read back from the simulated part.

When a unit's record is stored the board still sits in its slot: its manufacturing partition is
read straight from the simulated nRF52840's flash file, decoded, and its signature checked with
the plant signer's public key; the record must name the same key and signature id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.demo.images import DEVICE_CERTIFICATE
from agent.firmware import device_key, factory_data
from agent.firmware.crypto import PublicKey, verify_signature
from agent.sim.nrf52840.boards import current_board_dir
from agent.wire.messages import UnitRecord


@dataclass
class PartitionCheck:
    """Checks units of pyOCD slots (virtual nRF52840); other backends are not read back here."""

    bays: dict[str, Any]
    address: int
    size: int
    public_key: PublicKey
    keep: Path | None = None  # each partition read is also saved here as SERIAL.bin
    device_ca: x509.Certificate | None = None  # the intermediate that certifies device keys
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    def read(self, slot: str, address: int | None = None, size: int | None = None
             ) -> bytes | None:
        """Flash of the board in ``slot`` (the partition by default): a virtual nRF52840's or
        the in-memory target's; None for other backends."""
        bay = self.bays.get(slot)
        start = self.address if address is None else address
        length = self.size if size is None else size
        board = getattr(bay, "board", None)
        if board is not None and hasattr(board, "flash"):  # the in-memory target (sim-flash)
            return bytes(board.flash[start:start + length])
        if bay is None or not hasattr(bay, "probe_uid"):
            return None
        flash = current_board_dir(bay.board_dir, bay.probe_uid) / "flash.bin"
        with flash.open("rb") as f:  # 4 KiB from a local file: no need to leave the loop
            f.seek(start)
            return f.read(length)

    def check(self, record: UnitRecord) -> str:
        """One line about this unit's partition; problems are also collected."""
        if record.outcome != "pass":
            return "factory data: not written (unit failed)"
        blob = self.read(record.slot)
        if blob is None:
            return "factory data: not read back on this backend"
        if self.keep is not None:
            self.keep.mkdir(parents=True, exist_ok=True)
            (self.keep / f"{record.serial}.bin").write_bytes(blob)
        problem = self._problem(record, blob)
        self.checked += 1
        if problem is not None:
            self.problems.append(f"serial {record.serial}: {problem}")
            return f"factory data: PROBLEM {problem}"
        (image,) = [i for i in record.images if i.name == "manufacturing"]
        line = (f"factory data: signature {image.signature_id} by {image.key_ref} verifies "
                "with the plant key")
        certificate = record.device_certificate
        if certificate is not None and self.device_ca is not None:
            problem = self._certificate_problem(record)
            if problem is not None:
                self.problems.append(f"serial {record.serial}: {problem}")
                return f"{line}\n          device certificate: PROBLEM {problem}"
            line += (f"\n          device certificate {certificate.serial} from "
                     f"{certificate.issuer} chains to the plant device root")
        return line

    def _certificate_problem(self, record: UnitRecord) -> str | None:
        assert self.device_ca is not None
        (image,) = [i for i in record.images if i.name == "device-certificate"]
        region = self.read(record.slot, image.address, image.size)
        key = self.read(record.slot, DEVICE_CERTIFICATE["key_address"], 128)
        assert region is not None
        assert key is not None
        try:
            cert = x509.load_der_x509_certificate(device_key.parse_cert_region(region))
            cert.verify_directly_issued_by(self.device_ca)
        except (ValueError, TypeError, InvalidSignature) as exc:
            return f"the certificate does not verify: {exc!r}"
        point = cert.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        if point != device_key.parse_key_record(key):
            return "the certificate is for another key than the part's"
        if record.device_certificate is None or \
                f"{cert.serial_number:x}" != record.device_certificate.serial:
            return "the record names another certificate"
        return None

    def _problem(self, record: UnitRecord, blob: bytes) -> str | None:
        try:
            decoded = factory_data.decode(blob)
        except factory_data.FactoryDataError as exc:
            return str(exc)
        signature = decoded.signature
        if decoded.problems or signature is None:
            return "; ".join(decoded.problems) or "no signature in the partition"
        if not verify_signature(signature.alg, self.public_key, decoded.digest,
                                signature.signature):
            return "the signature does not verify with the plant key"
        (image,) = [i for i in record.images if i.name == "manufacturing"]
        if (image.key_ref, image.signature_id) != (signature.key_ref, signature.signature_id):
            return "the record names another key or signature than the partition holds"
        if decoded.entries.get(1, b"").decode() != record.serial:
            return "the partition holds another serial"
        return None
