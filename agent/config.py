"""Station configuration: frozen pydantic models loaded from TOML.

Every defect is reported with its key path, what was expected and what was found
(``fixture-agent check-config FILE``).

Paths: what the station writes (``storage.dir``, ``simulation.board_dir``) lives in its state
directory: ``--state-dir``, else ``$STATE_DIRECTORY`` (set by systemd's ``StateDirectory=``), else
``/var/lib/fixture-agent``; relative values are taken inside it and ``storage.dir`` defaults to
it. What the station only reads (TLS files, the image CA bundle) is relative to the file's folder.
Nothing is ever written next to the configuration.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.errors import ConfigError
from agent.firmware.trust import TrustSection
from agent.wire.mqtt import RECONNECT_MAX_S, RECONNECT_MIN_S

StationId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,47}$")]
SlotName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,15}$")]
BcmPin = Annotated[int, Field(ge=0, le=27, description="Broadcom GPIO number")]


class Section(BaseModel):
    """Base of every configuration section."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class StationSection(Section):
    id: StationId


class TlsSection(Section):
    ca: Path
    cert: Path | None = None
    key: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> TlsSection:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together: give both or neither")
        return self


class BrokerSection(Section):
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    tls: TlsSection | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    session_expiry_s: Annotated[int, Field(ge=0, le=30 * 86400)] = 7 * 86400
    reconnect_min_s: Annotated[float, Field(gt=0, le=60)] = RECONNECT_MIN_S
    reconnect_max_s: Annotated[float, Field(gt=0, le=600)] = RECONNECT_MAX_S
    group: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,47}$")] | None = None

    @model_validator(mode="after")
    def _backoff(self) -> BrokerSection:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self


class PinMap(Section):
    """BCM pin numbers of the fixture's inputs and relays."""

    clamp_sensor: BcmPin
    clamp_actuator: BcmPin
    dut_power: BcmPin
    interlock: BcmPin
    lamp_pass: BcmPin
    lamp_fail: BcmPin
    lamp_busy: BcmPin

    @model_validator(mode="after")
    def _distinct(self) -> PinMap:
        used: dict[int, str] = {}
        for name, pin in self.model_dump().items():
            if pin in used:
                raise ValueError(f"pin {pin} is used by both {used[pin]} and {name}")
            used[pin] = name
        return self


class FixtureSection(Section):
    backend: Literal["gpio", "sim"] = "gpio"
    pins: PinMap
    clamp_bounce_ms: Annotated[int, Field(ge=0, le=1000)] = 20
    clamp_settle_ms: Annotated[int, Field(ge=0, le=5000)] = 150
    power_settle_ms: Annotated[int, Field(ge=0, le=5000)] = 50
    # pyOCD and UART slots each run in a worker process ("process"); "thread" keeps them on
    # threads of the station's process (one GIL for every slot: for comparison and debugging).
    slot_workers: Literal["process", "thread"] = "process"


class SlotSection(Section):
    """What every slot has: its name, and optionally its own PASS/FAIL lamps (a panel's X-out)."""

    name: SlotName
    lamp_pass: BcmPin | None = None
    lamp_fail: BcmPin | None = None

    def pins(self) -> dict[str, int]:
        """The fixture pins this slot drives, by what they are for."""
        names = ("lamp_pass", "lamp_fail", "boot0_pin", "nreset_pin")
        return {name: pin for name in names if (pin := getattr(self, name, None)) is not None}


class SimFlashSlot(SlotSection):
    """A slot whose board is the in-memory simulated target (no pyOCD)."""

    backend: Literal["sim-flash"]
    flash_size: Annotated[int, Field(ge=4096, le=16 * 1024 * 1024)] = 1024 * 1024
    page_size: Annotated[int, Field(ge=256, le=128 * 1024)] = 4096
    op_delay_ms: Annotated[int, Field(ge=0, le=10_000)] = 0


class PyOcdSlot(SlotSection):
    """A slot programmed over SWD/JTAG through pyOCD."""

    backend: Literal["pyocd"]
    probe: Annotated[str, Field(min_length=1, description="probe unique id, e.g. sim:0001")]
    frequency_hz: Annotated[int, Field(ge=10_000, le=50_000_000)] = 4_000_000


class UartSlot(SlotSection):
    """A slot programmed through the STM32 ROM bootloader (AN3155) on a serial port."""

    backend: Literal["stm32-uart"]
    port: Annotated[str, Field(min_length=1)]
    baud: Annotated[int, Field(ge=1200, le=4_000_000)] = 115200
    parity: Literal["even", "none"] = "even"
    boot0_pin: BcmPin | None = None
    nreset_pin: BcmPin | None = None


UsbId = Annotated[int, Field(ge=0, le=0xFFFF)]
UsbPortPath = Annotated[str, Field(pattern=r"^[0-9]{1,3}-[0-9]{1,3}(\.[0-9]{1,3}){0,6}$")]


class DfuSlot(SlotSection):
    """A slot programmed through a USB-DFU bootloader (DFU 1.1 with ST's DfuSe extensions).

    ``usb_path`` (the hub port, ``1-1.3`` as dfu-util's ``--path``) tells boards on one hub
    apart; ST's ROM bootloader derives its serial string from each chip's UID, so ``serial``
    suits only a device that keeps its own.
    """

    backend: Literal["usb-dfu"]
    vid: UsbId = 0x0483
    pid: UsbId = 0xDF11
    serial: Annotated[str, Field(min_length=1, max_length=126)] | None = None
    usb_path: UsbPortPath | None = None
    boot0_pin: BcmPin | None = None
    nreset_pin: BcmPin | None = None


SlotConfig = Annotated[
    SimFlashSlot | PyOcdSlot | UartSlot | DfuSlot, Field(discriminator="backend")
]


DEFAULT_STATE_DIR = Path("/var/lib/fixture-agent")


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """systemd's ``$STATE_DIRECTORY`` (its first entry) when set, else /var/lib/fixture-agent."""
    value = (os.environ if env is None else env).get("STATE_DIRECTORY", "")
    return Path(value.split(":")[0]) if value else DEFAULT_STATE_DIR


class StorageSection(Section):
    dir: Path = Field(description="the station's state (database, image cache); default: the "
                                  "state directory itself")

    @property
    def database(self) -> Path:
        """The station's SQLite file (outbox, jobs, sequence numbers)."""
        return self.dir / "station.db"

    @property
    def images(self) -> Path:
        """The content-addressed image cache."""
        return self.dir / "images"


class LimitsSection(Section):
    outbox_max_records: Annotated[int, Field(ge=10, le=10_000_000)] = 50_000
    min_free_disk_mb: Annotated[int, Field(ge=0)] = 256
    max_message_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 256 * 1024
    unit_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 300.0
    record_ack_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0


class ImageFault(Section):
    """A simulated defect tied to one image: writing it fails to take on a share of the parts.

    Only the in-memory target (``sim-flash`` slots) honours it; the fleet demo uses it to show a
    bad release halted by the rollout gate.
    """

    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    rate: Annotated[float, Field(ge=0, le=1)]


class SimulationSection(Section):
    """Where simulated boards live when slots use the simulated probe or bootloader."""

    board_dir: Path | None = None
    timing: bool = False
    faults: Annotated[tuple[ImageFault, ...], Field(max_length=16)] = ()


class ImagesSection(Section):
    """How firmware images are downloaded into the station's cache."""

    ca_bundle: Path | None = None
    attempts: Annotated[int, Field(ge=1, le=20)] = 4


class SignerSection(Section):
    """The plant signing service for factory data (sets that require it fail units without).

    The station authenticates with its broker certificate (``broker.tls``) unless ``cert`` and
    ``key`` name others; ``ca`` is the authority that signed the service's certificate.
    """

    url: Annotated[str, Field(pattern=r"^https://[^\s/]+(/[^\s]*)?$")]
    ca: Path
    cert: Path | None = None
    key: Path | None = None
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 5.0

    @model_validator(mode="after")
    def _pair(self) -> SignerSection:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together: give both or neither")
        return self


class StationConfig(Section):
    """The whole station configuration."""

    station: StationSection
    broker: BrokerSection
    fixture: FixtureSection
    slots: Annotated[tuple[SlotConfig, ...], Field(min_length=1, max_length=16)]
    storage: StorageSection
    trust: TrustSection
    images: ImagesSection = ImagesSection()
    limits: LimitsSection = LimitsSection()
    simulation: SimulationSection = SimulationSection()
    signer: SignerSection | None = None

    def slot_lamps(self) -> dict[str, tuple[int | None, int | None]]:
        """Per-slot (PASS, FAIL) lamp pins of the slots that have their own lamps."""
        return {slot.name: (slot.lamp_pass, slot.lamp_fail) for slot in self.slots
                if slot.lamp_pass is not None or slot.lamp_fail is not None}

    @model_validator(mode="after")
    def _signer_identity(self) -> StationConfig:
        signer, tls = self.signer, self.broker.tls
        if signer is not None and signer.cert is None and (tls is None or tls.cert is None):
            raise ValueError("signer: the station needs a client certificate: give signer.cert "
                             "and signer.key, or broker.tls.cert and broker.tls.key")
        return self

    def signer_identity(self) -> tuple[Path, Path] | None:
        """The certificate and key the station shows the signing service."""
        if self.signer is None:
            return None
        if self.signer.cert is not None and self.signer.key is not None:
            return self.signer.cert, self.signer.key
        tls = self.broker.tls
        if tls is None or tls.cert is None or tls.key is None:
            return None
        return tls.cert, tls.key

    @model_validator(mode="after")
    def _unique_slots(self) -> StationConfig:
        names = [slot.name for slot in self.slots]
        if len(set(names)) != len(names):
            raise ValueError(f"slot names repeat: {names}")
        used = {pin: f"a fixture pin ({name})"
                for name, pin in self.fixture.pins.model_dump().items()}
        for slot in self.slots:
            for label, pin in slot.pins().items():
                if pin in used:
                    raise ValueError(f"slot {slot.name} {label} {pin} is {used[pin]}")
                used[pin] = f"slot {slot.name}'s {label}"
        _dfu_slots_apart([slot for slot in self.slots if isinstance(slot, DfuSlot)])
        return self


def _dfu_slots_apart(slots: list[DfuSlot]) -> None:
    """Two usb-dfu slots must not be able to pick the same device."""
    for index, slot in enumerate(slots):
        for other in slots[index + 1 :]:
            if (slot.vid, slot.pid) != (other.vid, other.pid):
                continue
            paths = slot.usb_path, other.usb_path
            serials = slot.serial, other.serial
            apart_by_path = None not in paths and paths[0] != paths[1]
            apart_by_serial = None not in serials and serials[0] != serials[1]
            if not (apart_by_path or apart_by_serial):
                raise ValueError(
                    f"usb-dfu slots {slot.name} and {other.name} could pick the same "
                    f"{slot.vid:04x}:{slot.pid:04x} device: give each its own usb_path "
                    "(the hub port) or serial")


def _resolve_paths(raw: dict[str, Any], base: Path, state_dir: Path) -> None:
    """Written paths inside the state directory; read-only files relative to the config's folder."""
    if isinstance(raw.get("storage", {}), dict):
        raw.setdefault("storage", {}).setdefault("dir", ".")
    targets = [("storage", "dir", state_dir), ("simulation", "board_dir", state_dir),
               ("images", "ca_bundle", base)]
    for section, key, root in targets:
        value = raw.get(section, {}).get(key) if isinstance(raw.get(section), dict) else None
        if isinstance(value, str) and not Path(value).is_absolute():
            raw[section][key] = str((root / value).resolve())
    tls = raw.get("broker", {}).get("tls") if isinstance(raw.get("broker"), dict) else None
    for files in (tls, raw.get("signer")):
        if not isinstance(files, dict):
            continue
        for key in ("ca", "cert", "key"):
            value = files.get(key)
            if isinstance(value, str) and not Path(value).is_absolute():
                files[key] = str(base / value)


def format_problems(error: ValidationError) -> list[str]:
    """One line per defect: key path, expectation, what was found."""
    problems = []
    items = error.errors(include_url=False)
    nested = {item["loc"][:depth] for item in items for depth in range(len(item["loc"]))}
    for item in items:
        if item["type"] == "too_short" and item["loc"] in nested:
            continue  # "slots: too short" only echoes an invalid slot reported on its own
        loc = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "missing" and item["loc"] == ("trust",):
            problems.append("trust: missing; the station accepts firmware sets only from the "
                            "release keys listed here: append the entry `fixture-agent plant "
                            "keygen` prints (README: run a station against your own broker)")
            continue
        found = item.get("input")
        if item["type"] == "missing":
            shown = "nothing"
        elif isinstance(found, dict):
            shown = "a table"
        else:
            shown = repr(found)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        problems.append(f"{loc}: {item['msg']}; found {shown}")
    return problems


def parse_config(raw: dict[str, Any], *, source: str, base: Path,
                 state_dir: Path | None = None) -> StationConfig:
    """Validate an already-decoded TOML tree (``base``: the file's folder)."""
    _resolve_paths(raw, base, state_dir or default_state_dir())
    try:
        return StationConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, format_problems(exc)) from None


def load_config(path: Path, *, state_dir: Path | None = None) -> StationConfig:
    """Load and validate a TOML configuration file, or raise ConfigError naming every problem."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None
    return parse_config(raw, source=str(path), base=path.resolve().parent, state_dir=state_dir)
