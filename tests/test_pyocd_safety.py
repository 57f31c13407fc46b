"""The pyOCD backend holds on any probe and any part (issue 10, items 2, 3, 4 and 6).

Each fault here is one a probe or part that no one here wrote showed: a probe whose close does not
cut the transfer in flight, a part whose lock register reads back but does not lock, a core that
leaves lockup only through a reset. The virtual nRF52840 carries them as injected faults.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from agent.errors import FailureCode, ProgrammerAborted, ProgrammerError, TargetLocked
from agent.hw.programmer import ConnectOptions, Region
from agent.hw.pyocd_programmer import PyOcdProgrammer
from agent.sim.nrf52840 import place_new_board, read_board_memory
from agent.sim.nrf52840.boards import current_board_dir, set_close_ignored, update_board
from agent.sim.nrf52840.power import flash_bytes_read, switch_power
from tests.conftest import NRF_PROBE
from tests.test_pyocd_programmer import images, program_unit

UID = NRF_PROBE
NRF = ConnectOptions(target="nrf52840")
BIG = Region("application", 0x10000, 256 * 1024)


async def test_an_aborted_write_fails_even_when_the_probe_lets_it_finish(
        boards: Path, programmer: PyOcdProgrammer) -> None:
    place_new_board(boards, UID)
    update_board(boards, UID, timing=True)  # a real part's flash time: the abort lands mid-write
    set_close_ignored(boards, UID)
    await programmer.connect(NRF)
    image = os.urandom(BIG.size)
    write = asyncio.create_task(programmer.write(BIG, image))
    await asyncio.sleep(0.5)
    assert not write.done()
    await programmer.abort()
    with pytest.raises(ProgrammerAborted):
        await write
    # the probe did let it finish: only the backend's own rule keeps this from being a success
    assert read_board_memory(boards, UID, BIG.address, BIG.size) == image


async def test_a_lock_is_proven_by_a_reset_and_takes_effect(
        boards: Path, programmer: PyOcdProgrammer) -> None:
    place_new_board(boards, UID)
    switch_power(boards, UID, True)  # one power-on for the whole test: no power cycle helps
    await program_unit(programmer, images(), lock=True)
    with pytest.raises(TargetLocked):
        await programmer.connect(NRF)


async def test_a_part_that_does_not_lock_fails_the_lock(
        boards: Path, programmer: PyOcdProgrammer) -> None:
    place_new_board(boards, UID)
    update_board(boards, UID, lock_ignored=True)
    with pytest.raises(ProgrammerError) as failure:
        await program_unit(programmer, images(), lock=True)
    assert failure.value.code == FailureCode.LOCK_FAILED


async def test_a_recovered_part_is_programmable_even_if_only_a_reset_ends_its_lockup(
        boards: Path, programmer: PyOcdProgrammer) -> None:
    place_new_board(boards, UID, locked=True)
    update_board(boards, UID, lockup_needs_reset=True)
    recover = ConnectOptions(target="nrf52840", recover_locked=True)
    connection = await programmer.connect(recover)
    assert connection.recovered_locked_part
    await programmer.disconnect()
    parts = images()
    await program_unit(programmer, parts)
    for region, data in parts:
        assert read_board_memory(boards, UID, region.address, region.size) == data


async def test_a_reflash_reads_each_region_once(boards: Path,
                                                programmer: PyOcdProgrammer) -> None:
    place_new_board(boards, UID)
    parts = [(BIG, os.urandom(BIG.size))]
    await program_unit(programmer, parts)  # first programming, then the board back from rework
    board = current_board_dir(boards, UID)
    before = flash_bytes_read(board)
    await program_unit(programmer, parts)
    read = flash_bytes_read(board) - before
    assert BIG.size <= read < 1.05 * BIG.size  # the verify read, and no second read of the image


async def test_a_programming_session_never_parses_the_parts_svd(
        boards: Path, programmer: PyOcdProgrammer) -> None:
    # pyOCD parses the SVD on a thread of every session it opens (about 0.2 s of CPU per unit on
    # the nRF52840); programming never reads it, and a panel of slots paid it on every unit
    place_new_board(boards, UID)
    await programmer.connect(NRF)
    target = programmer._link.session.target
    # loading: a thread is running, or it finished and left the device model behind
    assert target._svd_load_thread is None
    assert target._svd_device is None
