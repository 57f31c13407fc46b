"""Demo firmware: three deterministic images, the signed set that carries them, and the job."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.firmware.crypto import public_key_pem
from agent.plant.keys import generate_private_key
from agent.plant.sign import PemSigner, sign_set

# Region map of the demo product on an nRF52840 (1 MiB flash, 4 KiB pages).
DEMO_IMAGES = (
    ("bootloader", "bootloader", 0x0000_0000, 16 * 1024, "1.4.2", "hsm:release-boot-2026"),
    ("application", "application", 0x0001_0000, 48 * 1024, "3.8.0", "hsm:release-app-2026"),
    ("filesystem", "filesystem", 0x000E_0000, 8 * 1024, "2026.11.1", "hsm:release-app-2026"),
)
MANUFACTURING = {"address": 0x000F_E000, "size": 4096}
# The demo product's factory data: identity, provenance, a MAC from the plant's block (the unit
# with serial number n gets F4:CE:36:00:00:00 + n) and two calibration slots at their defaults.
FACTORY_FIELDS = (
    {"tag": 1, "name": "serial", "source": "serial", "type": "text", "size": 24},
    {"tag": 2, "name": "chip_uid", "source": "chip_uid", "type": "text", "size": 32},
    {"tag": 3, "name": "product", "source": "product", "type": "text", "size": 32},
    {"tag": 4, "name": "job", "source": "job", "type": "text", "size": 64},
    {"tag": 5, "name": "station", "source": "station", "type": "text", "size": 48},
    {"tag": 6, "name": "programmed_at", "source": "time", "type": "u64", "size": 8},
    {"tag": 16, "name": "ble_mac", "source": "pool", "type": "hex", "size": 6,
     "pool_first": 0xF4CE_3600_0000, "pool_count": 1_000_000},
    {"tag": 32, "name": "adc_gain", "source": "calibration", "type": "u32", "size": 4,
     "default": 1_000_000},
    {"tag": 33, "name": "temp_offset", "source": "calibration", "type": "u32", "size": 4,
     "default": 0},
)


# The virtual nRF52840's boards carry their own key's record here (agent.sim.nrf52840.boards);
# the plant's certificate for it goes to the page below.
DEVICE_CERTIFICATE = {"key_address": 0x000F_D000, "cert_address": 0x000F_C000, "cert_size": 1024}


def signed_factory_data(region: dict[str, Any], *,
                        device_certificate: bool = False) -> dict[str, Any]:
    """A manufacturing section with the demo's field layout that the plant must sign, and a
    device certificate for the part's own key when asked."""
    section = {**region, "format_version": 1, "fields": list(FACTORY_FIELDS),
               "signing": "required"}
    if device_certificate:
        section["device_certificate"] = DEVICE_CERTIFICATE
    return section
VALID_FLAG_FLASH = {"kind": "flash-word", "address": 0x000F_F000, "value": 0x600DF00D}
VALID_FLAG_UICR = {"kind": "uicr", "address": 0x1000_1080, "value": 0x600DF00D}
PRODUCT = "sensor-node"


def image_bytes(name: str, size: int) -> bytes:
    """Deterministic, incompressible content for a demo image."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{name}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def write_images(folder: Path, *, variant: str = "") -> list[dict[str, Any]]:
    """Write the demo images to ``folder``; returns their manifest entries (file:// URLs).

    ``variant`` changes the application's content and version (a second release of the set).
    """
    entries = []
    for name, role, address, size, version, key_ref in DEMO_IMAGES:
        if variant and role == "application":
            version = f"{version}+{variant}"
        data = image_bytes(f"{name}{variant if role == 'application' else ''}", size)
        entries.append(_image_file(folder / f"{name}-{version}.bin", data, name=name, role=role,
                                   address=address, version=version, key_ref=key_ref))
    return entries


def _image_file(path: Path, data: bytes, *, name: str, role: str, address: int, version: str,
                key_ref: str) -> dict[str, Any]:
    """Write one image and describe it as a manifest entry (a file:// URL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"name": name, "role": role, "address": address, "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "version": version,
            "url": path.resolve().as_uri(), "key_ref": key_ref}


def demo_manifest(images: list[dict[str, Any]], *, uicr_flag: bool, set_id: str,
                  sequence: int, activation: str = "next_job",
                  lock: str = "on-request", signed: bool = False,
                  device_certificate: bool = False) -> dict[str, Any]:
    """A firmware-set manifest (schema v2) of the demo product, valid for 30 days.

    ``signed``: the factory data has a field layout and must be signed by the plant;
    ``device_certificate``: the plant certifies the part's own key too (virtual nRF52840)."""
    now = datetime.now(UTC).replace(microsecond=0)
    return {"schema": "fixture-agent/firmware-set@2", "set_id": set_id, "product": PRODUCT,
            "sequence": sequence,
            "not_before": (now - timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
            "expires": (now + timedelta(days=30)).isoformat().replace("+00:00", "Z"),
            "target": {"family": "nrf52", "pyocd_target": "nrf52840"},
            "images": images,
            "manufacturing": signed_factory_data(MANUFACTURING,
                                                 device_certificate=device_certificate)
            if signed else MANUFACTURING,
            "valid_flag": VALID_FLAG_UICR if uicr_flag else VALID_FLAG_FLASH,
            "lock": lock, "activation": {"mode": activation}}


class ReleaseKey:
    """The plant's release signing key for a demo or test run (never given to a station)."""

    def __init__(self, key_id: str = "demo-release") -> None:
        self.key_id = key_id
        self._signer = PemSigner(generate_private_key("ed25519"), key_id=key_id)

    def trust_section(self) -> dict[str, Any]:
        """The station's ``[trust]`` table for this key."""
        return {"keys": [{"key_id": self.key_id, "alg": "ed25519",
                          "public_key_pem": public_key_pem(self._signer.public_key())}]}

    def sign(self, manifest: dict[str, Any]) -> bytes:
        """The signed set, as published."""
        return sign_set(json.dumps(manifest).encode(), self._signer)


# A second product for UART (and USB-DFU) slots: an STM32F4 gateway. Sectors: 4 x 16 KiB from
# 0x08000000, then 64 KiB at 0x08010000; each region and the valid flag get sectors of their own,
# because an erase takes whole sectors.
STM32_PRODUCT = "gateway"
STM32_MANUFACTURING = {"address": 0x0800_8000, "size": 1024}
STM32_IMAGES = (
    ("bootloader", "bootloader", 0x0800_0000, 8 * 1024, "2.0.0", "hsm:gw-release"),
    ("filesystem", "filesystem", 0x0800_C000, 4 * 1024, "2.0.0", "hsm:gw-release"),
    ("application", "application", 0x0801_0000, 16 * 1024, "2.0.0", "hsm:gw-release"),
)


def write_stm32_images(folder: Path) -> list[dict[str, Any]]:
    """Write the gateway's images to ``folder``; returns their manifest entries."""
    return [_image_file(folder / f"{name}.bin", image_bytes(f"gw-{name}", size), name=name,
                        role=role, address=address, version=version, key_ref=key_ref)
            for name, role, address, size, version, key_ref in STM32_IMAGES]


def stm32_manifest(images: list[dict[str, Any]], *, set_id: str = "gateway-2.0",
                   sequence: int = 1, signed: bool = False) -> dict[str, Any]:
    """A firmware-set manifest of the gateway (STM32F4 ROM bootloader), valid for a day."""
    now = datetime.now(UTC).replace(microsecond=0)
    return {"schema": "fixture-agent/firmware-set@2", "set_id": set_id,
            "product": STM32_PRODUCT, "sequence": sequence,
            "not_before": (now - timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
            "expires": (now + timedelta(days=1)).isoformat().replace("+00:00", "Z"),
            "target": {"family": "stm32f4", "bootloader": "stm32f4"}, "images": images,
            "manufacturing": signed_factory_data(STM32_MANUFACTURING) if signed
            else STM32_MANUFACTURING,
            "valid_flag": {"kind": "flash-word", "address": 0x0800_4000, "value": 0x600DF00D}}


def demo_job(*, set_id: str, job_id: str, station: str, units: int,
             first_serial: int = 1000, product: str = PRODUCT) -> dict[str, Any]:
    """A job for ``units`` good units with room in the serial range for rework."""
    return {"schema": "fixture-agent/job@1", "job_id": job_id, "station": station,
            "product": product, "set_id": set_id,
            "serials": {"prefix": "SN-", "first": first_serial,
                        "last": first_serial + 2 * units + 10, "width": 6},
            "quantity": units, "lock": False}
