"""`fixture-agent factory-data decode FILE`: take a unit's manufacturing partition apart.

FILE holds the partition as read back from a unit. With ``--set`` (the firmware set, signed or
not) the fields are shown by name and type; with ``--public-key`` (the plant signer's key, PEM)
the signature is checked. Exit 0 when the data is intact (and the signature verifies, when a
key is given), 1 when not, 2 when FILE is no factory data at all.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from agent.firmware import factory_data
from agent.firmware.crypto import load_public_key, verify_signature
from agent.wire.factory_layout import ManufacturingSpec


def register(subparsers: Any) -> None:
    """Add ``factory-data decode``."""
    parser = subparsers.add_parser("factory-data", help="decode and check factory data")
    sub = parser.add_subparsers(dest="factory_command", required=True, metavar="TOOL")
    decode = sub.add_parser("decode", help="decode and check a partition read from a unit")
    decode.add_argument("file", type=Path, metavar="FILE")
    decode.add_argument("--set", type=Path, help="the firmware set (JSON) that declares the "
                                                 "layout: fields are shown by name")
    decode.add_argument("--public-key", type=Path, help="the signing key's PEM public key")
    decode.set_defaults(handler=_decode)


def _layout(path: Path) -> ManufacturingSpec | None:
    raw = json.loads(path.read_text())
    manifest = raw.get("manifest", raw)
    section = manifest.get("manufacturing")
    return None if section is None else ManufacturingSpec.model_validate_json(json.dumps(section))


def _decode(args: argparse.Namespace) -> int:
    try:
        decoded = factory_data.decode(args.file.read_bytes())
    except (OSError, factory_data.FactoryDataError) as exc:
        print(f"{args.file}: {exc}")
        return 2
    layout = _layout(args.set) if args.set is not None else None
    names = {spec.tag: spec for spec in layout.fields} if layout is not None else {}
    print(f"factory data format {factory_data.FORMAT}, layout {decoded.layout_version}, "
          f"{len(decoded.data)} bytes, SHA-256 {decoded.digest.hex()}")
    for tag, raw in sorted(decoded.entries.items()):
        spec = names.get(tag)
        shown = factory_data.field_value(spec, raw) if spec is not None else raw.hex()
        label = f"{spec.name} ({spec.type})" if spec is not None else "(not in the layout)"
        print(f"  tag {tag:>3} {label}: {shown}")
    problems = list(decoded.problems)
    signature = decoded.signature
    if signature is None:
        print("signature: none")
    else:
        print(f"signature: {signature.alg} by {signature.key_ref}, id {signature.signature_id}")
    if args.public_key is not None:
        if signature is None:
            problems.append("no signature to check")
        else:
            key = load_public_key(signature.alg, args.public_key.read_text())
            if verify_signature(signature.alg, key, decoded.digest, signature.signature):
                print("signature verifies with the given public key")
            else:
                problems.append("the signature does not verify with the given public key")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0
