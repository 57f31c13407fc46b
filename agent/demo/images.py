"""Demo firmware: three deterministic images and the job that programs them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

# Region map of the demo product on an nRF52840 (1 MiB flash, 4 KiB pages).
DEMO_IMAGES = (
    ("bootloader", "bootloader", 0x0000_0000, 16 * 1024, "1.4.2", "hsm:release-boot-2026"),
    ("application", "application", 0x0001_0000, 48 * 1024, "3.8.0", "hsm:release-app-2026"),
    ("filesystem", "filesystem", 0x000E_0000, 8 * 1024, "2026.11.1", "hsm:release-app-2026"),
)
MANUFACTURING = {"address": 0x000F_E000, "size": 4096}
VALID_FLAG_FLASH = {"kind": "flash-word", "address": 0x000F_F000, "value": 0x600DF00D}
VALID_FLAG_UICR = {"kind": "uicr", "address": 0x1000_1080, "value": 0x600DF00D}


def image_bytes(name: str, size: int) -> bytes:
    """Deterministic, incompressible content for a demo image."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{name}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def write_images(folder: Path) -> list[dict[str, Any]]:
    """Write the demo images to ``folder``; returns their manifest entries (file:// URLs)."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, role, address, size, version, key_ref in DEMO_IMAGES:
        data = image_bytes(name, size)
        path = folder / f"{name}-{version}.bin"
        path.write_bytes(data)
        entries.append({"name": name, "role": role, "address": address, "size": size,
                        "sha256": hashlib.sha256(data).hexdigest(), "version": version,
                        "url": path.resolve().as_uri(), "key_ref": key_ref})
    return entries


def demo_firmware_set(images: list[dict[str, Any]], *, uicr_flag: bool) -> dict[str, Any]:
    """The demo product's firmware set."""
    return {"schema": "fixture-agent/firmware-set@1", "set_id": "sensor-node-2026.11",
            "product": "sensor-node", "sequence": 7,
            "target": {"family": "nrf52", "pyocd_target": "nrf52840"},
            "images": images, "manufacturing": MANUFACTURING,
            "valid_flag": VALID_FLAG_UICR if uicr_flag else VALID_FLAG_FLASH}


def demo_job(firmware_set: dict[str, Any], *, job_id: str, station: str, units: int,
             first_serial: int = 1000) -> dict[str, Any]:
    """A job for ``units`` good units with room in the serial range for rework."""
    return {"schema": "fixture-agent/job@1", "job_id": job_id, "station": station,
            "product": "sensor-node", "firmware_set": firmware_set,
            "serials": {"prefix": "SN-", "first": first_serial,
                        "last": first_serial + 2 * units + 10, "width": 6},
            "quantity": units, "lock": False}
