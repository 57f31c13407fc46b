"""Strict decoding of inbound payloads and canonical encoding of outbound ones.

pydantic accepts JSON that a station must refuse: duplicate keys (the last silently wins, so two
readers may disagree on what a job says), NaN/Infinity, arbitrarily deep nesting and lone UTF-16
surrogates. :func:`parse_inbound` checks those first, then validates against the model, and turns
every defect into a :class:`~agent.errors.BadMessage` that names the field.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from agent.errors import BadMessage

M = TypeVar("M", bound=BaseModel)

MAX_DEPTH = 32


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise BadMessage("duplicate_key", f"key {key!r} appears more than once")
        seen[key] = value
    return seen


def _no_constants(name: str) -> Any:
    raise BadMessage("bad_number", f"{name} is not a JSON number")


def _fits(value: Any, depth: int, strings: bool) -> bool:
    """What :func:`_check_tree` checks, without building paths: the fast pass on every payload.

    ``strings``: check strings for lone surrogates (only a ``\\u`` escape can make one: the text
    was valid UTF-8).
    """
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, dict):
        for key, item in value.items():
            if strings and not _fits(key, depth + 1, strings):
                return False
            if not _fits(item, depth + 1, strings):
                return False
    elif isinstance(value, list):
        for item in value:
            if not _fits(item, depth + 1, strings):
                return False
    elif strings and isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def _check_tree(value: Any, depth: int, path: str) -> None:
    """Raise the BadMessage that names where the tree fails :func:`_fits` (the slow pass)."""
    if depth > MAX_DEPTH:
        raise BadMessage("too_deep", f"nesting deeper than {MAX_DEPTH} levels at {path or '$'}")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadMessage("bad_string", f"lone surrogate in string at {path or '$'}") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_tree(key, depth + 1, path)
            _check_tree(item, depth + 1, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_tree(item, depth + 1, f"{path}[{index}]")


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem: the field path, what was expected, what was found."""
    lines = []
    for item in error.errors(include_url=False):
        message = item["msg"].removeprefix("Value error, ")
        if not item["loc"]:  # a check of the whole message: the message is what was found
            lines.append(message)
            continue
        loc = ".".join(str(part) for part in item["loc"])
        found = item.get("input")
        shown = repr(found) if not isinstance(found, dict | list) else type(found).__name__
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"{loc}: {message} (found {shown})")
    return "; ".join(lines)


def parse_inbound(model: type[M], payload: bytes, *, max_bytes: int) -> M:
    """Decode ``payload`` into ``model`` or raise :class:`BadMessage` saying exactly why."""
    if len(payload) > max_bytes:
        raise BadMessage("too_large", f"payload of {len(payload)} bytes exceeds {max_bytes}")
    if not payload:
        raise BadMessage("empty", "empty payload")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadMessage("not_utf8", f"payload is not UTF-8 at byte {exc.start}") from None
    try:
        tree = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except BadMessage:
        raise
    except RecursionError:
        raise BadMessage("too_deep", f"nesting deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, and int() beyond sys.get_int_max_str_digits
        raise BadMessage("not_json", f"not valid JSON: {exc}") from None
    # Brackets counted in the text (strings included) bound the nesting from above, and only a
    # \\u escape can make a lone surrogate: most payloads need no walk of their tree at all.
    strings = "\\u" in text
    if (text.count("{") + text.count("[") > MAX_DEPTH or strings) and not _fits(tree, 0, strings):
        _check_tree(tree, 0, "")
    if not isinstance(tree, dict):
        raise BadMessage("not_object", f"expected a JSON object, found {type(tree).__name__}")
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise BadMessage("invalid", describe_validation_error(exc)) from None


def encode(model: BaseModel) -> bytes:
    """Compact JSON with schema aliases, as published on the wire."""
    return model.model_dump_json(by_alias=True, exclude_none=False).encode("utf-8")
