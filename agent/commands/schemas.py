"""`fixture-agent schemas`: the JSON Schema of every message that crosses MQTT (and the signing
service's HTTPS), from the models.

The schemas in ``docs/schemas/`` are generated, never edited: the models are the truth, and a test
fails when a file no longer matches what this command writes. Plant systems written in other
languages validate against them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agent.firmware.manifest import FirmwareSetManifest, SignedFirmwareSet
from agent.wire.messages import (
    Command,
    Job,
    RecordAck,
    RecorderState,
    Reject,
    StationStatus,
    UnitRecord,
)
from agent.wire.signing import (
    CertifyRequest,
    CertifyResponse,
    SignRefusal,
    SignRequest,
    SignResponse,
)

# Every message on the wire, in the order a unit's life meets them.
WIRE_MESSAGES: tuple[type[BaseModel], ...] = (
    Job, FirmwareSetManifest, SignedFirmwareSet, Command, StationStatus, SignRequest,
    SignResponse, SignRefusal, CertifyRequest, CertifyResponse, UnitRecord, RecordAck, Reject,
    RecorderState,
)
DRAFT = "https://json-schema.org/draft/2020-12/schema"


def schema_id(model: type[BaseModel]) -> str:
    """The value of the message's own ``schema`` field, e.g. ``fixture-agent/job@1``."""
    value = model.model_fields["schema_"].default
    if not isinstance(value, str):
        raise TypeError(f"{model.__name__} has no schema id")
    return value


def file_name(model: type[BaseModel]) -> str:
    """``fixture-agent/job@1`` -> ``job@1.schema.json``."""
    return schema_id(model).removeprefix("fixture-agent/") + ".schema.json"


def render(model: type[BaseModel]) -> str:
    """The schema document of one message, byte-stable (sorted keys, trailing newline)."""
    body: dict[str, Any] = {"$schema": DRAFT, "$id": schema_id(model),
                            **model.model_json_schema(by_alias=True, mode="validation")}
    return json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def stale(folder: Path) -> list[str]:
    """Files in ``folder`` that differ from what the models generate, are missing, or extra."""
    wanted = {file_name(model): render(model) for model in WIRE_MESSAGES}
    found = {path.name for path in folder.glob("*.schema.json")} if folder.is_dir() else set()
    problems = [f"{name}: missing" for name in sorted(set(wanted) - found)]
    problems += [f"{name}: not a wire message (remove it)" for name in sorted(found - set(wanted))]
    problems += [f"{name}: differs from the model" for name in sorted(set(wanted) & found)
                 if (folder / name).read_text(encoding="utf-8") != wanted[name]]
    return problems


def register(subparsers: Any) -> None:
    """Add the schemas command."""
    parser = subparsers.add_parser("schemas", help="write the JSON Schema of every wire message")
    parser.add_argument("--out", type=Path, default=Path("docs/schemas"), metavar="DIR",
                        help="folder for the *.schema.json files (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when the folder is not current")
    parser.set_defaults(handler=_schemas)


def _schemas(args: argparse.Namespace) -> int:
    if args.check:
        problems = stale(args.out)
        for problem in problems:
            print(f"{args.out}/{problem}", file=sys.stderr)
        return 1 if problems else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.schema.json"):
        old.unlink()
    for model in WIRE_MESSAGES:
        (args.out / file_name(model)).write_text(render(model), encoding="utf-8")
        print(f"{args.out / file_name(model)}  ({model.__name__})")
    return 0
