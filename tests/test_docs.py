"""The documentation is current and true: schemas match the models, every example is a message."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agent.commands.schemas import WIRE_MESSAGES, file_name, schema_id, stale
from agent.wire.codec import parse_inbound

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "docs" / "schemas"
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MODELS = {schema_id(model): model for model in WIRE_MESSAGES}


def json_examples() -> list[tuple[str, str]]:
    """Every ```json block of the README and docs/, labelled file:line."""
    found = []
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        for match in re.finditer(r"^```json\n(.*?)^```", text, re.S | re.M):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{document.relative_to(ROOT)}:{line}", match.group(1)))
    return found


def test_the_schemas_in_docs_are_generated_from_the_current_models() -> None:
    problems = stale(SCHEMAS)
    assert problems == [], ("docs/schemas is stale; run: fixture-agent schemas --out "
                            f"docs/schemas\n{problems}")


def test_there_are_examples_to_check() -> None:
    names = {json.loads(body)["schema"] for _, body in json_examples()}
    assert {"fixture-agent/job@1", "fixture-agent/firmware-set@2",
            "fixture-agent/signed-firmware-set@1"} <= names


@pytest.mark.parametrize(("where", "body"), json_examples(), ids=lambda v: str(v)[:40])
def test_every_json_example_is_a_valid_message(where: str, body: str) -> None:
    message: Any = json.loads(body)  # strict JSON: no comments, no placeholders
    name = message.get("schema") if isinstance(message, dict) else None
    assert name in MODELS, f"{where}: an example must be a whole message with a known schema"
    model = MODELS[name]
    schema = json.loads((SCHEMAS / file_name(model)).read_text())
    jsonschema.Draft202012Validator(schema).validate(message)
    parse_inbound(model, body.encode(), max_bytes=1 << 20)  # and the receiver's own decoding
    if "manifest" in message:  # a signed set: its manifest is a message too
        manifest = MODELS[message["manifest"]["schema"]]
        inner = json.loads((SCHEMAS / file_name(manifest)).read_text())
        jsonschema.Draft202012Validator(inner).validate(message["manifest"])
        parse_inbound(manifest, json.dumps(message["manifest"]).encode(), max_bytes=1 << 20)
