"""The anti-rollback state survives restarts and fails closed when unreadable."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import FirmwareSetError
from agent.firmware.antirollback import AntiRollbackStore


async def test_newest_sequence_persists_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "anti-rollback.json"
    store = AntiRollbackStore.load(path)
    assert await store.accept(product="widget", sequence=3, digest="a" * 64, set_id="s3")
    assert not await store.accept(product="widget", sequence=3, digest="a" * 64, set_id="s3")
    reloaded = AntiRollbackStore.load(path)
    newest = reloaded.newest("widget")
    assert newest is not None
    assert (newest.sequence, newest.set_id) == (3, "s3")
    with pytest.raises(FirmwareSetError) as info:
        await reloaded.accept(product="widget", sequence=2, digest="b" * 64, set_id="s2")
    assert info.value.code == "rollback"
    with pytest.raises(FirmwareSetError) as info:
        await reloaded.accept(product="widget", sequence=3, digest="b" * 64, set_id="s3b")
    assert info.value.code == "sequence_conflict"
    assert [p.name for p in path.parent.iterdir()] == ["anti-rollback.json"]  # no temp left


async def test_products_are_independent(tmp_path: Path) -> None:
    store = AntiRollbackStore.load(tmp_path / "ar.json")
    await store.accept(product="widget", sequence=9, digest="a" * 64, set_id="w9")
    assert await store.accept(product="gadget", sequence=1, digest="c" * 64, set_id="g1")


@pytest.mark.parametrize("content", [b"", b"{", b'{"schema":"other","products":{}}',
                                     b'{"schema":"fixture-agent/anti-rollback@1"}'])
def test_an_unreadable_state_file_fails_closed(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "ar.json"
    path.write_bytes(content)
    with pytest.raises(FirmwareSetError) as info:
        AntiRollbackStore.load(path)
    assert info.value.code == "storage_error"
