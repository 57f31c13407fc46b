"""Factory data (format 2): deterministic TLV bytes with a CRC-32, and the plant's signature.

Why TLV and not CBOR: the part's own firmware reads this partition at boot, in C, with no
decoder library; a tag-length-value list sorted by tag has one encoding for one set of values
(nothing like CBOR's map-ordering rules to get right) and every field is at most 255 bytes.

Layout, little-endian::

    "FAFD"  format u8 (=2)  layout u8 (the set's format_version)  body length u16
    body: entries sorted by tag: tag u8, length u8, value
    CRC-32 (IEEE 802.3, as zlib.crc32) u32 of everything before it
      -- the "factory data": the signing service signs SHA-256 of exactly these bytes --
    "FSIG"  alg u8 (1 ed25519, 2 ecdsa-p256)  signature length u8  signature
            key reference length u8  key reference  signature id length u8  signature id
            CRC-32 u32 of the block
    0xFF up to the partition size (erased flash)

Values: ``text`` UTF-8 (at most ``size`` bytes), ``hex`` exactly ``size`` bytes, ``u32``/``u64``
unsigned. A ``pool`` field holds ``pool_first + serial number`` big-endian when ``hex``.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass, field

from agent.firmware.crypto import Alg
from agent.wire.factory_layout import FactoryField, ManufacturingSpec

MAGIC = b"FAFD"
SIG_MAGIC = b"FSIG"
FORMAT = 2
HEADER = struct.Struct("<4sBBH")
CRC = struct.Struct("<I")
ALG_CODES: dict[Alg, int] = {"ed25519": 1, "ecdsa-p256": 2}


class FactoryDataError(ValueError):
    """The values do not fit the layout, or bytes are no valid factory data; says which."""


@dataclass(frozen=True)
class UnitValues:
    """What the station knows about one unit when it builds the data."""

    serial: str
    serial_number: int
    chip_uid: str
    station: str
    slot: str
    job: str
    product: str
    time: int  # Unix seconds


@dataclass(frozen=True)
class Signature:
    """The signing service's answer, as stored after the factory data."""

    alg: Alg
    signature: bytes
    key_ref: str
    signature_id: str


@dataclass(frozen=True)
class Decoded:
    """A partition taken apart: the factory data, its entries, and the signature if any."""

    layout_version: int
    data: bytes
    entries: dict[int, bytes]
    signature: Signature | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def digest(self) -> bytes:
        """SHA-256 of the factory data: what the signature covers."""
        return hashlib.sha256(self.data).digest()


def _value(spec: FactoryField, values: UnitValues) -> int | str:
    if spec.source == "calibration":
        assert spec.default is not None
        return spec.default
    if spec.source == "pool":
        assert spec.pool_first is not None
        assert spec.pool_count is not None
        if values.serial_number >= spec.pool_count:
            raise FactoryDataError(f"field {spec.name}: serial number {values.serial_number} is "
                                   f"past the pool of {spec.pool_count}")
        return spec.pool_first + values.serial_number
    by_source: dict[str, int | str] = {
        "serial": values.serial, "chip_uid": values.chip_uid, "station": values.station,
        "slot": values.slot, "job": values.job, "product": values.product, "time": values.time}
    return by_source[spec.source]


def _encode_value(spec: FactoryField, value: int | str) -> bytes:
    try:
        if spec.type in ("u32", "u64"):
            if not isinstance(value, int):
                raise FactoryDataError(f"field {spec.name}: {value!r} is not an integer")
            return value.to_bytes(spec.size, "little")
        if spec.type == "hex":
            raw = value.to_bytes(spec.size, "big") if isinstance(value, int) \
                else bytes.fromhex(value)
            if len(raw) != spec.size:
                raise FactoryDataError(f"field {spec.name}: {len(raw)} bytes where the layout "
                                       f"says {spec.size}")
            return raw
        raw = str(value).encode()
    except (OverflowError, ValueError) as exc:
        if isinstance(exc, FactoryDataError):
            raise
        raise FactoryDataError(f"field {spec.name}: {value!r} does not fit {spec.type} of "
                               f"{spec.size} bytes") from None
    if len(raw) > spec.size:
        raise FactoryDataError(f"field {spec.name}: {len(raw)} bytes, the layout allows "
                               f"{spec.size}")
    return raw


def encode(layout: ManufacturingSpec, values: UnitValues) -> bytes:
    """The factory data of one unit: the same layout and values give the same bytes."""
    body = b"".join(
        bytes((spec.tag, len(raw))) + raw
        for spec in sorted(layout.fields, key=lambda f: f.tag)
        for raw in (_encode_value(spec, _value(spec, values)),))
    head = HEADER.pack(MAGIC, FORMAT, layout.format_version, len(body)) + body
    return head + CRC.pack(zlib.crc32(head))


def signature_block(signature: Signature) -> bytes:
    """The signature as it follows the factory data in the partition."""
    key_ref, sig_id = signature.key_ref.encode(), signature.signature_id.encode()
    if max(len(key_ref), len(sig_id), len(signature.signature)) > 255:
        raise FactoryDataError("a signature, key reference or signature id over 255 bytes")
    block = (SIG_MAGIC + bytes((ALG_CODES[signature.alg], len(signature.signature)))
             + signature.signature + bytes((len(key_ref),)) + key_ref
             + bytes((len(sig_id),)) + sig_id)
    return block + CRC.pack(zlib.crc32(block))


def partition(*, size: int, data: bytes, signature: Signature | None) -> bytes:
    """The whole partition image, exactly ``size`` bytes."""
    blob = data + (signature_block(signature) if signature is not None else b"")
    if len(blob) > size:
        raise FactoryDataError(f"factory data needs {len(blob)} bytes, the partition has {size}")
    return blob + b"\xff" * (size - len(blob))


def decode(blob: bytes) -> Decoded:
    """Take a partition apart; raises FactoryDataError when it is no factory data at all."""
    if len(blob) < HEADER.size + CRC.size:
        raise FactoryDataError(f"{len(blob)} bytes: too short for factory data")
    magic, fmt, layout_version, length = HEADER.unpack_from(blob)
    if magic != MAGIC or fmt != FORMAT:
        raise FactoryDataError(f"not factory data of format {FORMAT} (magic {magic!r}, "
                               f"format {fmt})")
    end = HEADER.size + length
    if end + CRC.size > len(blob):
        raise FactoryDataError(f"body of {length} bytes runs past the partition")
    problems = []
    (crc,) = CRC.unpack_from(blob, end)
    if crc != zlib.crc32(blob[:end]):
        problems.append("CRC-32 of the factory data does not match")
    entries: dict[int, bytes] = {}
    offset = HEADER.size
    while offset < end:
        if offset + 2 > end:
            raise FactoryDataError(f"entry at byte {offset} is cut off")
        tag, size = blob[offset], blob[offset + 1]
        entries[tag] = blob[offset + 2:offset + 2 + size]
        offset += 2 + size
    data = blob[:end + CRC.size]
    signature = _decode_signature(blob, end + CRC.size, problems)
    return Decoded(layout_version=layout_version, data=data, entries=entries,
                   signature=signature, problems=problems)


def _decode_signature(blob: bytes, offset: int, problems: list[str]) -> Signature | None:
    if blob[offset:offset + 4] != SIG_MAGIC:
        return None
    try:
        alg_code, sig_len = blob[offset + 4], blob[offset + 5]
        pos = offset + 6
        sig = blob[pos:pos + sig_len]
        pos += sig_len
        key_ref = blob[pos + 1:pos + 1 + blob[pos]].decode()
        pos += 1 + blob[pos]
        sig_id = blob[pos + 1:pos + 1 + blob[pos]].decode()
        pos += 1 + blob[pos]
        (crc,) = CRC.unpack_from(blob, pos)
    except (IndexError, UnicodeDecodeError, struct.error):
        problems.append("the signature block is cut off or garbled")
        return None
    if crc != zlib.crc32(blob[offset:pos]):
        problems.append("CRC-32 of the signature block does not match")
    algs = {code: alg for alg, code in ALG_CODES.items()}
    if alg_code not in algs:
        problems.append(f"unknown signature algorithm code {alg_code}")
        return None
    return Signature(alg=algs[alg_code], signature=sig, key_ref=key_ref, signature_id=sig_id)


def field_value(spec: FactoryField, raw: bytes) -> int | str:
    """A decoded entry as the layout types it (for display and checks)."""
    if spec.type in ("u32", "u64"):
        return int.from_bytes(raw, "little")
    if spec.type == "hex":
        return raw.hex()
    return raw.decode(errors="replace")
