"""Versioned wire models: what crosses MQTT between the plant and a station.

Every model is frozen and forbids unknown keys; inbound payloads are parsed with
:func:`agent.wire.parse_inbound`, which also rejects JSON that pydantic alone would accept
(duplicate keys, NaN, deep nesting, lone surrogates). Field names are the domain's.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from agent.wire.factory_layout import FactoryField, ManufacturingSpec
from agent.wire.messages_base import (
    MAX_IMAGE_BYTES,
    ROLE_ORDER,
    Address,
    Ident,
    ImageRole,
    Sha256Hex,
    Text,
    Wire,
    Word,
)

__all__ = ["MAX_IMAGE_BYTES", "ROLE_ORDER", "Address", "FactoryField", "Ident", "ImageRole",
           "ManufacturingSpec", "Sha256Hex", "Text", "Wire", "Word"]


class ImageSpec(Wire):
    """One image of a firmware set and the region it is written to."""

    name: Ident
    role: ImageRole
    address: Address
    size: Annotated[int, Field(ge=1, le=MAX_IMAGE_BYTES)]
    sha256: Sha256Hex
    version: Text
    url: Annotated[str, Field(min_length=1, max_length=2048)]
    key_ref: Text = Field(description="reference of the key that signed this image (HSM label)")

    @model_validator(mode="after")
    def _fits_address_space(self) -> ImageSpec:
        if self.address + self.size > 0x1_0000_0000:
            raise ValueError(f"image {self.name} runs past the 32-bit address space")
        return self


class ValidFlagSpec(Wire):
    """Where the valid marker lives (see :class:`agent.hw.programmer.ValidFlag`)."""

    kind: Literal["flash-word", "uicr"] = "flash-word"
    address: Address
    value: Word = 0x600DF00D


class TargetSpec(Wire):
    """What the images are built for."""

    family: Ident
    pyocd_target: Ident | None = None
    bootloader: Ident | None = None


class FirmwareSet(Wire):
    """A firmware-set manifest: the images a product ships with and where they go."""

    schema_: Literal["fixture-agent/firmware-set@1"] = Field(
        "fixture-agent/firmware-set@1", alias="schema"
    )
    set_id: Ident
    product: Ident
    sequence: Annotated[int, Field(ge=0, le=2**53)] = 0
    target: TargetSpec
    images: Annotated[tuple[ImageSpec, ...], Field(min_length=1, max_length=16)]
    manufacturing: ManufacturingSpec | None = None
    valid_flag: ValidFlagSpec

    @model_validator(mode="after")
    def _images_consistent(self) -> FirmwareSet:
        names = [image.name for image in self.images]
        if len(set(names)) != len(names):
            raise ValueError(f"image names repeat: {names}")
        if any(image.role == "manufacturing" for image in self.images):
            raise ValueError("the manufacturing partition is generated per unit; declare it "
                             "under 'manufacturing', not as an image")
        spans = sorted((i.address, i.address + i.size, i.name) for i in self.images)
        if self.manufacturing is not None:
            m = self.manufacturing
            spans = sorted([*spans, (m.address, m.address + m.size, "manufacturing")])
            if (cert := m.device_certificate) is not None:
                spans = sorted([*spans, (cert.key_address, cert.key_address + 128, "device-key"),
                                (cert.cert_address, cert.cert_address + cert.cert_size,
                                 "device-certificate")])
        for (_, end_a, name_a), (start_b, _, name_b) in pairwise(spans):
            if start_b < end_a:
                raise ValueError(f"regions {name_a} and {name_b} overlap")
        flag = self.valid_flag
        if flag.kind == "flash-word":
            for start, end, name in spans:
                if start <= flag.address < end:
                    raise ValueError(f"valid flag at 0x{flag.address:08X} lies inside {name}")
        return self

    def ordered_images(self) -> tuple[ImageSpec, ...]:
        """Images in programming order: bootloader, application, file system."""
        return tuple(sorted(self.images, key=lambda i: (ROLE_ORDER[i.role], i.address)))


class SerialRange(Wire):
    """Serials a job may hand out: ``prefix`` + zero-padded number, ``first``..``last``."""

    prefix: Annotated[str, Field(pattern=r"^[A-Z0-9-]{0,16}$")] = ""
    first: Annotated[int, Field(ge=0, le=10**12)]
    last: Annotated[int, Field(ge=0, le=10**12)]
    width: Annotated[int, Field(ge=1, le=12)] = 6

    @model_validator(mode="after")
    def _ordered(self) -> SerialRange:
        if self.last < self.first:
            raise ValueError(f"serial range is empty: last {self.last} < first {self.first}")
        if len(str(self.last)) > self.width:
            raise ValueError(f"serial {self.last} does not fit in width {self.width}")
        return self

    @property
    def count(self) -> int:
        """How many serials the range holds."""
        return self.last - self.first + 1

    def format(self, number: int) -> str:
        """The serial string for ``number``."""
        return f"{self.prefix}{number:0{self.width}d}"


class Job(Wire):
    """A work order for one station: program ``quantity`` good units of ``product``.

    The job names its firmware set by id; the set itself arrives signed on its own topic, and
    the job waits until that set is verified and staged (nothing else is programmed instead).
    """

    schema_: Literal["fixture-agent/job@1"] = Field("fixture-agent/job@1", alias="schema")
    job_id: Ident
    station: Ident | None = None
    product: Ident
    set_id: Ident
    serials: SerialRange
    quantity: Annotated[int, Field(ge=1, le=1_000_000)]
    lock: bool = False
    recover_locked: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> Job:
        if self.quantity > self.serials.count:
            raise ValueError(f"quantity {self.quantity} exceeds the {self.serials.count} "
                             "serials of the range")
        return self


class ImageResult(Wire):
    """What was written to one region of one unit and whether it read back identical."""

    name: str
    role: ImageRole
    version: str
    address: int
    size: int
    sha256: str
    key_ref: str
    signature_id: str | None = Field(None, description="the plant signing service's id of "
                                                       "the signature (manufacturing only)")
    readback_sha256: str | None = None
    verified: bool = False


class StageTiming(Wire):
    """How long one stage of the cycle took."""

    stage: str
    duration_ms: float
    ok: bool


class Failure(Wire):
    """Why a unit failed and where."""

    code: str
    stage: str
    detail: str
    region: str | None = None


GENESIS_DIGEST = "0" * 64  # prev_digest of a station's first record


def record_digest(payload: bytes) -> str:
    """The chain digest of a record: sha256 of the exact bytes published."""
    return hashlib.sha256(payload).hexdigest()


class DeviceCertificate(Wire):
    """The certificate the plant issued for the part's own key."""

    serial: str = Field(description="certificate serial number, hex")
    issuer: str = Field(description="issuer name (RFC 4514)")
    key_ref: str = Field(description="the issuing key on the plant's HSM")


class UnitRecord(Wire):
    """The traceability record of one unit: answers "what shipped on serial X, signed by whom"."""

    schema_: Literal["fixture-agent/unit-record@2"] = Field(
        "fixture-agent/unit-record@2", alias="schema"
    )
    record_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    seq: Annotated[int, Field(ge=1)]
    # The hash chain: sha256 of the exact bytes of this station's record seq - 1 (GENESIS_DIGEST
    # for seq 1), taken in the transaction that takes seq. An edited or deleted record breaks it.
    prev_digest: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    station: str
    slot: str
    job_id: str
    product: str
    serial: str | None
    chip_uid: str | None
    firmware_set_id: str
    manifest_digest: str
    images: tuple[ImageResult, ...]
    started_at: datetime
    finished_at: datetime
    stages: tuple[StageTiming, ...]
    outcome: Literal["pass", "fail"]
    routing: Literal["ship", "rework"]
    failure: Failure | None = None
    aborted: bool = False
    valid_flag_set: bool = False
    lock_requested: bool = False
    locked: bool = False
    recovered_locked_part: bool = False
    device_certificate: DeviceCertificate | None = None
    agent_version: str


class RecordAck(Wire):
    """The recorder's confirmation that records are stored durably on the plant side."""

    schema_: Literal["fixture-agent/record-ack@1"] = Field(
        "fixture-agent/record-ack@1", alias="schema"
    )
    record_ids: Annotated[tuple[Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")], ...],
                          Field(min_length=1, max_length=1000)]


class RecorderState(Wire):
    """A recorder's presence: "gone" is its last will, so stations resend at once what it held."""

    schema_: Literal["fixture-agent/recorder-state@1"] = Field(
        "fixture-agent/recorder-state@1", alias="schema"
    )
    recorder: str
    state: Literal["online", "gone"]


class Reject(Wire):
    """Why an inbound message was refused."""

    schema_: Literal["fixture-agent/reject@1"] = Field("fixture-agent/reject@1", alias="schema")
    station: str
    topic: str
    ref: str | None = None
    code: str
    reason: str
    at: datetime


class JobProgress(Wire):
    """The station's view of its current job."""

    job_id: str
    product: str
    firmware_set_id: str
    quantity: int
    passed: int
    failed: int
    state: Literal["active", "complete", "exhausted", "superseded", "waiting"]


class StationStatus(Wire):
    """Retained per-station status; the broker replaces it with the last will when we vanish."""

    schema_: Literal["fixture-agent/status@1"] = Field("fixture-agent/status@1", alias="schema")
    station: str
    state: Literal["online", "offline"]
    group: str | None = Field(None, description="the station's group ([broker] group), if any")
    accepting_units: bool = False
    blocked: tuple[str, ...] = ()
    job: JobProgress | None = None
    outbox_depth: int = 0
    last_seq: int = 0
    link_error: str | None = None
    signing_error: str | None = Field(None, description="why the last unit got no signed "
                                                        "factory data (cleared on success)")
    rollout: dict[str, Any] | None = None
    agent_version: str = ""
    at: datetime | None = None


class Command(Wire):
    """An operator command for one station (``fixture/v1/station/{id}/command``)."""

    schema_: Literal["fixture-agent/command@1"] = Field("fixture-agent/command@1", alias="schema")
    command: Literal["rollback"]
    product: Ident | None = None
