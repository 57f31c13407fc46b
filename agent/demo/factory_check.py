"""The demo's host-side check of every unit's factory data, read back from the virtual part.

When a unit's record is stored the board still sits in its slot: its manufacturing partition is
read straight from the simulated nRF52840's flash file, decoded, and its signature checked with
the plant signer's public key; the record must name the same key and signature id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.firmware import factory_data
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
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    def read(self, slot: str) -> bytes | None:
        """The partition of the board in ``slot`` as its flash holds it, if it is an nRF52840."""
        bay = self.bays.get(slot)
        if bay is None or not hasattr(bay, "probe_uid"):
            return None
        flash = current_board_dir(bay.board_dir, bay.probe_uid) / "flash.bin"
        with flash.open("rb") as f:  # 4 KiB from a local file: no need to leave the loop
            f.seek(self.address)
            return f.read(self.size)

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
        (image,) = [i for i in record.images if i.role == "manufacturing"]
        return (f"factory data: signature {image.signature_id} by {image.key_ref} verifies "
                "with the plant key")

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
        (image,) = [i for i in record.images if i.role == "manufacturing"]
        if (image.key_ref, image.signature_id) != (signature.key_ref, signature.signature_id):
            return "the record names another key or signature than the partition holds"
        if decoded.entries.get(1, b"").decode() != record.serial:
            return "the partition holds another serial"
        return None
