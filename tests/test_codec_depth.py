"""The nesting and surrogate checks of inbound payloads, at their edges.

Most payloads skip the walk of their tree (their brackets cannot nest past the limit and they have
no ``\\u`` escape); the walk must still catch every payload that can fail.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from agent.errors import BadMessage
from agent.wire.codec import MAX_DEPTH, parse_inbound


class Anything(BaseModel):
    a: Any = None


def nested(depth: int, opener: str) -> bytes:
    """A value ``depth`` containers deep under key a (the object itself is one more)."""
    inner = "1"
    for _ in range(depth):
        inner = f"[{inner}]" if opener == "[" else f'{{"k": {inner}}}'
    return f'{{"a": {inner}}}'.encode()


def depth_of(value: Any) -> int:
    """The depth of the deepest value, the root at 0 (what the check limits)."""
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=-1)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=-1)
    return 0


@pytest.mark.parametrize("opener", ["[", "{"])
def test_the_limit_is_exact(opener: str) -> None:
    parse_inbound(Anything, nested(MAX_DEPTH - 1, opener), max_bytes=10_000)
    with pytest.raises(BadMessage) as caught:
        parse_inbound(Anything, nested(MAX_DEPTH, opener), max_bytes=10_000)
    assert caught.value.code == "too_deep"


def test_brackets_inside_strings_do_not_make_a_flat_payload_deep() -> None:
    payload = json.dumps({"a": "[" * 100 + "{" * 100}).encode()
    assert parse_inbound(Anything, payload, max_bytes=10_000).a == "[" * 100 + "{" * 100


def test_an_escaped_surrogate_deep_in_a_list_is_found() -> None:
    payload = b'{"a": [1, 2, {"b": ["ok", "\\udc00"]}]}'
    with pytest.raises(BadMessage, match=r"lone surrogate in string at \.a\[2\]\.b\[1\]"):
        parse_inbound(Anything, payload, max_bytes=10_000)


def test_an_escaped_pair_is_a_character_not_a_surrogate() -> None:
    assert parse_inbound(Anything, b'{"a": "\\ud83d\\ude00"}', max_bytes=100).a == "\U0001F600"


trees = st.recursive(st.integers() | st.text(max_size=3),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=2), inner, max_size=3), max_leaves=60)


@given(trees)
def test_any_tree_is_refused_exactly_when_too_deep(tree: Any) -> None:
    payload = json.dumps({"a": tree}).encode()
    if depth_of({"a": tree}) > MAX_DEPTH:
        with pytest.raises(BadMessage, match="deeper than"):
            parse_inbound(Anything, payload, max_bytes=1 << 20)
    else:
        parse_inbound(Anything, payload, max_bytes=1 << 20)
