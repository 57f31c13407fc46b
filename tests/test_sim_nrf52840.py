"""The virtual nRF52840 under bare pyOCD, its board files, faults and timing switch; image files."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from intelhex import IntelHex
from pyocd.core import exceptions
from pyocd.core.helpers import ConnectHelper
from pyocd.flash.file_programmer import FileProgrammer

from agent.hw.image_files import ImageFileError, load_image_file, segments_from_elf
from agent.sim.nrf52840 import (
    inject_disconnect,
    place_new_board,
    read_board_memory,
    set_board_dir,
    set_board_timing,
)
from agent.sim.nrf52840.boards import BoardError, ProbeBusyError, ProbeLock
from agent.sim.nrf52840.probe import SimProbe
from agent.sim.nrf52840.settings import timing_enabled

UID = "s1"


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    set_board_dir(tmp_path / "boards")
    yield tmp_path / "boards"
    set_board_dir(None)
    os.environ.pop("FIXTURE_AGENT_SIM_DIR", None)


def session() -> object:
    return ConnectHelper.session_with_chosen_probe(
        unique_id=f"sim:{UID}",
        target_override="nrf52840",
        options={"auto_unlock": False, "hide_programming_progress": True, "no_config": True},
    )


def test_new_board_is_blank_with_its_device_id(root: Path) -> None:
    device_id = place_new_board(root, UID, device_id=0xFEEDFACE00000001)
    assert device_id == 0xFEEDFACE00000001
    assert read_board_memory(root, UID, 0, 4096) == b"\xff" * 4096
    assert read_board_memory(root, UID, 0x10000060, 8) == device_id.to_bytes(8, "little")
    assert place_new_board(root, UID) != device_id  # random ids for the next boards
    with pytest.raises(BoardError):
        place_new_board(root, "../escape")


def test_bare_pyocd_programs_and_reads_back(root: Path, tmp_path: Path) -> None:
    place_new_board(root, UID)
    image = bytes(range(256)) * 40  # 10 KiB: two and a half pages
    (tmp_path / "img.bin").write_bytes(image)
    with session() as s:  # type: ignore[attr-defined]
        FileProgrammer(s).program(str(tmp_path / "img.bin"), base_address=0x3000)
        assert bytes(s.target.read_memory_block8(0x3000, len(image))) == image
        assert s.target.read32(0x10000100) == 0x52840  # FICR INFO.PART through the AHB-AP
    assert read_board_memory(root, UID, 0x3000, len(image)) == image


def test_flash_writes_only_clear_bits(root: Path) -> None:
    place_new_board(root, UID)
    with session() as s:  # type: ignore[attr-defined]
        target = s.target
        for value in (0xF0F0FFFF, 0xFFFF0F0F):  # written straight through NVMC, no erase between
            target.write32(0x4001E504, 1)
            target.write32(0x20000, value)
            target.write32(0x4001E504, 0)
        assert target.read32(0x20000) == 0xF0F00F0F
        target.write32(0x20004, 0)  # NVMC read-only: the write does not take
        assert target.read32(0x20004) == 0xFFFFFFFF


def test_disconnect_fault_fires_once(root: Path) -> None:
    place_new_board(root, UID)
    inject_disconnect(root, UID, after_transfers=30)
    with pytest.raises(exceptions.Error), session() as s:  # type: ignore[attr-defined]
        s.target.read_memory_block8(0, 1024)
    with session() as s:  # type: ignore[attr-defined]
        assert len(s.target.read_memory_block8(0, 16)) == 16


def test_probe_is_exclusive_across_sessions(root: Path) -> None:
    place_new_board(root, UID)
    probe = SimProbe(root, UID)
    probe.open()
    try:
        with pytest.raises(ProbeBusyError):
            ProbeLock(root, UID).acquire()
    finally:
        probe.close()
    ProbeLock(root, UID).acquire()


def test_timing_model_is_off_by_default_and_switchable(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FIXTURE_AGENT_SIM_TIMING", raising=False)
    assert not timing_enabled()
    monkeypatch.setenv("FIXTURE_AGENT_SIM_TIMING", "1")
    assert timing_enabled()
    place_new_board(root, UID)
    set_board_timing(root, UID, True)
    probe = SimProbe(root, UID)
    probe.open()
    try:
        core = probe._board.core  # type: ignore[union-attr]
        # with the model on, a 41 us-per-word flash job keeps the core "running" after its BKPT
        core._halt(1, after_s=60.0)
        assert not core.halted
    finally:
        probe.close()


def test_image_files_bin_hex_elf(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"\x01" * 10)
    [seg] = load_image_file(tmp_path / "a.bin", address=0x1000)
    assert (seg.region.address, seg.region.size) == (0x1000, 10)
    with pytest.raises(ImageFileError):
        load_image_file(tmp_path / "a.bin")

    ihex = IntelHex()
    ihex.frombytes(b"\xaa" * 8, offset=0x100)
    ihex.frombytes(b"\xbb" * 4, offset=0x10001080)
    ihex.write_hex_file(str(tmp_path / "b.hex"))
    segs = load_image_file(tmp_path / "b.hex")
    assert [(s.address, s.data) for s in segs] == [(0x100, b"\xaa" * 8), (0x10001080, b"\xbb" * 4)]

    [elf_seg] = segments_from_elf("fw", minimal_elf(0x8000, b"\x11\x22\x33\x44"))
    assert (elf_seg.address, elf_seg.data) == (0x8000, b"\x11\x22\x33\x44")


def minimal_elf(paddr: int, payload: bytes) -> bytes:
    """A 32-bit little-endian ARM ELF with one PT_LOAD segment."""
    header = struct.pack(
        "<4sBBBBB7sHHIIIIIHHHHHH",
        b"\x7fELF",
        1,
        1,
        1,
        0,
        0,
        b"\0" * 7,
        2,
        40,
        1,
        paddr,
        52,
        0,
        0x05000000,
        52,
        32,
        1,
        40,
        0,
        0,
    )
    phdr = struct.pack("<IIIIIIII", 1, 84, paddr, paddr, len(payload), len(payload), 5, 4)
    return header + phdr + payload
