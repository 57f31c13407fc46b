"""The two small records a part with its own key exchanges with the plant, as flash bytes.

The part's firmware leaves its public key at the set's ``key_address``::

    "DKEY"  algorithm u8 (2 = P-256)  length u8 (65)  SEC1 uncompressed point

and the station writes the certificate the plant issued at ``cert_address``::

    "DCRT"  DER length u16 LE  DER  (0xFF up to the region's size)
"""

from __future__ import annotations

import struct

KEY_MAGIC = b"DKEY"
CERT_MAGIC = b"DCRT"
P256 = 2
KEY_RECORD_BYTES = 128  # what the station reads
P256_POINT_BYTES = 65


class DeviceKeyError(ValueError):
    """No usable key record, or a certificate that does not fit; says which."""


def key_record(point: bytes) -> bytes:
    """The record a part's firmware writes for its P-256 public key."""
    if len(point) != P256_POINT_BYTES or point[0] != 4:
        raise DeviceKeyError("a P-256 public key is 65 bytes starting with 0x04")
    return KEY_MAGIC + bytes((P256, len(point))) + point


def parse_key_record(blob: bytes) -> bytes:
    """The SEC1 point in a key record; DeviceKeyError when the part left none."""
    if blob[:4] != KEY_MAGIC:
        raise DeviceKeyError("the part holds no public key record (firmware did not make one)")
    alg, length = blob[4], blob[5]
    if alg != P256 or length != P256_POINT_BYTES:
        raise DeviceKeyError(f"unsupported device key: algorithm {alg}, {length} bytes")
    return blob[6:6 + length]


def cert_region(der: bytes, *, size: int) -> bytes:
    """The certificate region, exactly ``size`` bytes."""
    blob = CERT_MAGIC + struct.pack("<H", len(der)) + der
    if len(blob) > size:
        raise DeviceKeyError(f"the certificate needs {len(blob)} bytes, the region has {size}")
    return blob + b"\xff" * (size - len(blob))


def parse_cert_region(blob: bytes) -> bytes:
    """The DER certificate in a certificate region."""
    if blob[:4] != CERT_MAGIC:
        raise DeviceKeyError("no certificate in the region")
    (length,) = struct.unpack_from("<H", blob, 4)
    return blob[6:6 + length]
