"""The pyOCD backend on the virtual nRF52840: real pyOCD session, flash algorithm, FlashBuilder.

The small cycle below (connect, erase the valid flag, write, verify by SHA-256 of exactly the bytes
written, valid flag, optional lock) stands in for the station's cycle at the backend level.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from pathlib import Path

import pytest

from agent.errors import (
    FailureCode,
    ProbeLost,
    ProbeNotFound,
    ProgrammerAborted,
    TargetLocked,
    UnitFailure,
)
from agent.hw.programmer import Connection, ConnectOptions, Programmer, Region, ValidFlag
from agent.hw.pyocd_programmer import PyOcdProgrammer
from agent.sim.nrf52840 import (
    inject_disconnect,
    inject_stuck_word,
    place_new_board,
    read_board_memory,
)
from agent.sim.nrf52840.power import switch_power
from tests.conftest import NRF_PROBE

UID = NRF_PROBE
NRF = ConnectOptions(target="nrf52840")
FLAG = ValidFlag(kind="uicr", address=0x10001080, value=0x600DF00D)
APPROTECT = 0x10001208


def images() -> list[tuple[Region, bytes]]:
    """A bootloader and an application, neither page-aligned at the end."""
    boot = bytes((i * 7 + 3) & 0xFF for i in range(5000))
    app = os.urandom(9000)
    return [(Region("boot", 0x0, len(boot)), boot), (Region("app", 0x8000, len(app)), app)]


async def program_unit(
    prog: Programmer, parts: list[tuple[Region, bytes]], *, lock: bool = False
) -> tuple[str, Connection]:
    """Connect, invalidate, write + verify every region, set the valid flag; returns the uid."""
    connection = await prog.connect(NRF)
    uid = await prog.read_unique_id()
    await prog.erase(Region("valid-flag", FLAG.address, 4))
    for region, data in parts:
        await prog.write(region, data)
    for region, data in parts:
        got = hashlib.sha256(await prog.read(region)).hexdigest()
        if got != hashlib.sha256(data).hexdigest():
            raise UnitFailure(
                code=FailureCode.VERIFY_MISMATCH, stage="verify", detail=got, region=region.name
            )
    await prog.set_valid_flag(FLAG)
    if lock:
        await prog.lock()
    await prog.disconnect()
    return uid, connection


def word(root: Path, address: int) -> int:
    return int.from_bytes(read_board_memory(root, UID, address, 4), "little")


async def test_multi_image_program_and_verify(boards: Path, programmer: PyOcdProgrammer) -> None:
    device_id = place_new_board(boards, UID, device_id=0x0123456789ABCDEF)
    parts = images()
    uid, connection = await program_unit(programmer, parts)
    assert uid == "0123456789abcdef"
    assert connection == Connection(recovered_locked_part=False, uid_bytes=8)
    for region, data in parts:
        assert read_board_memory(boards, UID, region.address, region.size) == data
    assert word(boards, FLAG.address) == FLAG.value
    assert word(boards, APPROTECT) == 0xFFFFFFFF  # never written unless the job locks
    assert read_board_memory(boards, UID, 0x10000060, 8) == device_id.to_bytes(8, "little")


async def test_readback_mismatch_fails_naming_the_region(
    boards: Path, programmer: PyOcdProgrammer
) -> None:
    place_new_board(boards, UID)
    inject_stuck_word(boards, UID, 0x8000 + 0x400)  # a weak cell inside "app"
    with pytest.raises(UnitFailure) as failure:
        await program_unit(programmer, images())
    assert failure.value.code == FailureCode.VERIFY_MISMATCH
    assert failure.value.region == "app"
    assert word(boards, FLAG.address) == 0xFFFFFFFF  # never marked valid


async def test_probe_disconnect_mid_flash_fails_and_next_unit_passes(
    boards: Path, programmer: PyOcdProgrammer
) -> None:
    place_new_board(boards, UID)
    inject_disconnect(boards, UID, after_transfers=400)  # well inside the first write
    with pytest.raises(ProbeLost) as lost:
        await program_unit(programmer, images())
    assert lost.value.code == FailureCode.PROBE_LOST
    assert word(boards, FLAG.address) == 0xFFFFFFFF

    place_new_board(boards, UID)  # the operator swaps in the next unit; same programmer object
    await program_unit(programmer, images())
    assert word(boards, FLAG.address) == FLAG.value


async def test_abort_fails_the_operation_in_flight(
    boards: Path, programmer: PyOcdProgrammer
) -> None:
    place_new_board(boards, UID)
    await programmer.connect(NRF)
    big = os.urandom(256 * 1024)
    write = asyncio.create_task(programmer.write(Region("big", 0, len(big)), big))
    await asyncio.sleep(0.05)
    await programmer.abort()
    with pytest.raises((ProgrammerAborted, ProbeLost)):
        await write
    await programmer.connect(NRF)  # and the slot is usable again
    assert len(await programmer.read(Region("head", 0, 16))) == 16


async def test_dut_power_cut_fails_the_unit(boards: Path, programmer: PyOcdProgrammer) -> None:
    place_new_board(boards, UID)
    switch_power(boards, UID, True)
    await programmer.connect(NRF)
    switch_power(boards, UID, False)
    with pytest.raises(ProbeLost):
        await programmer.read(Region("head", 0, 16))


async def test_locked_part_is_refused_and_left_intact(
    boards: Path, programmer: PyOcdProgrammer
) -> None:
    place_new_board(boards, UID, locked=True)
    before = read_board_memory(boards, UID, 0, 4096)
    with pytest.raises(TargetLocked):
        await programmer.connect(NRF)
    assert read_board_memory(boards, UID, 0, 4096) == before
    assert word(boards, APPROTECT) == 0


async def test_locked_part_recovered_when_the_job_allows(
    boards: Path, programmer: PyOcdProgrammer
) -> None:
    place_new_board(boards, UID, locked=True)
    connection = await programmer.connect(ConnectOptions(target="nrf52840", recover_locked=True))
    assert connection.recovered_locked_part
    assert read_board_memory(boards, UID, 0, 16) == b"\xff" * 16
    await programmer.disconnect()
    await program_unit(programmer, images())


async def test_lock_at_the_end_locks_the_next_connect(
    boards: Path, programmer: PyOcdProgrammer
) -> None:
    place_new_board(boards, UID)
    await program_unit(programmer, images(), lock=True)
    assert word(boards, APPROTECT) == 0
    with pytest.raises(TargetLocked):
        await programmer.connect(NRF)


async def test_reflash_identical_skips_pages_and_still_verifies(
    boards: Path, programmer: PyOcdProgrammer, caplog: pytest.LogCaptureFixture
) -> None:
    place_new_board(boards, UID)
    parts = images()
    await program_unit(programmer, parts)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pyocd.flash.loader"):
        await program_unit(programmer, parts)
    reports = [r.getMessage() for r in caplog.records if "identical" in r.getMessage()]
    assert len(reports) == 2
    assert all("programmed 0 bytes (0 pages)" in line for line in reports)
    assert word(boards, FLAG.address) == FLAG.value  # the verify step ran and passed


async def test_uicr_flag_erase_keeps_the_other_uicr_words(
    boards: Path, programmer: PyOcdProgrammer
) -> None:
    place_new_board(boards, UID)
    await programmer.connect(NRF)
    await programmer.set_valid_flag(ValidFlag("uicr", 0x10001084, 0x12345678))
    await programmer.set_valid_flag(FLAG)
    await programmer.erase(Region("valid-flag", FLAG.address, 4))
    await programmer.disconnect()
    assert word(boards, FLAG.address) == 0xFFFFFFFF
    assert word(boards, 0x10001084) == 0x12345678


async def test_flash_word_valid_flag(boards: Path, programmer: PyOcdProgrammer) -> None:
    place_new_board(boards, UID)
    await programmer.connect(NRF)
    await programmer.set_valid_flag(ValidFlag("flash-word", 0xFF000, 0xA5A5A5A5))
    await programmer.disconnect()
    assert word(boards, 0xFF000) == 0xA5A5A5A5


async def test_missing_probe_is_reported_at_once(boards: Path) -> None:
    prog = PyOcdProgrammer(probe_id="sim:absent")
    with pytest.raises(ProbeNotFound):
        await asyncio.wait_for(prog.connect(NRF), timeout=10)
    prog.shutdown()


def test_implements_the_programmer_protocol() -> None:
    assert isinstance(PyOcdProgrammer(probe_id="sim:x"), Programmer)
