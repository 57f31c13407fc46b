"""The USB-DFU programmer through the Programmer protocol, on the simulated bus as pyusb backend.

Each board sits on a hub port with BOOT0 and NRESET on MockFactory pins, so every connect goes
through the same boot entry a fixture makes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pickle
import threading
from collections.abc import AsyncIterator

import pytest
import usb.core
import usb.util
from gpiozero.pins.mock import MockFactory

from agent.errors import (
    EraseFailed,
    FailureCode,
    ProbeLost,
    ProbeNotFound,
    ProgrammerAborted,
    ProgrammerError,
    ProtocolError,
    TargetLocked,
    WriteFailed,
)
from agent.hw import dfu_parts
from agent.hw.dfu import DfuInterface, DfuPolicy
from agent.hw.dfuse import DfuseCommands
from agent.hw.programmer import ConnectOptions, Programmer, Region, ValidFlag
from agent.hw.stm32_dfu import Stm32DfuProgrammer
from agent.hw.stm32_flash import STM32F40X
from agent.sim.stm32_dfu import BootLines, DfuBoard, DfuTiming, SimDfuDevice, SimUsbBus
from agent.sim.stm32_dfu.protocol import State, Status

FLASH = 0x0800_0000
UID_ADDRESS = 0x1FFF_7A10
F405 = ConnectOptions(target="stm32f405")
QUICK = DfuPolicy(enumerate_timeout_s=0.5)


@pytest.fixture
def factory() -> MockFactory:
    return MockFactory()


@pytest.fixture
def hub() -> SimUsbBus:
    return SimUsbBus()


def plug(hub: SimUsbBus, factory: MockFactory, port: int, *, pins: tuple[int, int] = (20, 21),
         timing: bool = False) -> SimDfuDevice:
    """A board on hub port ``port`` whose BOOT0/NRESET are ``pins``."""
    lines = BootLines(factory, boot0=pins[0], nreset=pins[1])
    return hub.attach(SimDfuDevice(port_numbers=(1, port), board=DfuBoard.blank(), lines=lines,
                                   timing=DfuTiming(enabled=timing)))


def programmer_for(hub: SimUsbBus, factory: MockFactory, port: int, *,
                   pins: tuple[int, int] = (20, 21), **settings: object) -> Stm32DfuProgrammer:
    return Stm32DfuProgrammer(usb_path=f"1-1.{port}",
                              boot0_pin=pins[0], nreset_pin=pins[1], policy=QUICK,
                              usb_backend=hub, pin_factory=factory, **settings)  # type: ignore[arg-type]


@pytest.fixture
def sim(hub: SimUsbBus, factory: MockFactory) -> SimDfuDevice:
    return plug(hub, factory, 1)


@pytest.fixture
async def programmer(
    hub: SimUsbBus, factory: MockFactory, sim: SimDfuDevice
) -> AsyncIterator[Stm32DfuProgrammer]:
    unit = programmer_for(hub, factory, 1)
    yield unit
    await unit.disconnect()
    unit.shutdown()


def sparse(size: int) -> bytes:
    """Mostly erased: data in the first and the last 2 KiB blocks only."""
    return os.urandom(300) + b"\xff" * (size - 600) + os.urandom(300)


def kinds(sim: SimDfuDevice, kind: str) -> list[int]:
    return [op.address for op in sim.history if op.kind == kind and op.address is not None]


async def test_one_unit_in_cycle_order(programmer: Stm32DfuProgrammer, sim: SimDfuDevice) -> None:
    assert isinstance(programmer, Programmer)
    boot = Region("bootloader", FLASH, 16 * 1024 - 100)
    app = Region("application", FLASH + 0x4000, 20 * 1024)  # sectors 1 and 2
    flag_region = Region("valid-flag", FLASH + 0xC000, 4)  # sector 3, alone
    images = {boot: os.urandom(boot.size), app: sparse(app.size)}
    sim.board.chip.flash[:0x10000] = b"\x00" * 0x10000  # whatever the last firmware left

    connection = await programmer.connect(F405)
    assert not connection.recovered_locked_part
    assert await programmer.read_unique_id() == sim.board.chip.uid.hex()
    await programmer.erase(flag_region)
    for region, image in images.items():
        await programmer.write(region, image)
    for region, image in images.items():
        back = await programmer.read(region)
        assert hashlib.sha256(back).digest() == hashlib.sha256(image).digest()
    await programmer.set_valid_flag(ValidFlag("flash-word", flag_region.address, 0x5AA5F00D))
    await programmer.lock()

    assert sim.board.chip.flash_bytes(flag_region.address, 4) == (0x5AA5F00D).to_bytes(4, "little")
    assert sim.board.protected
    assert sorted(kinds(sim, "erase")) == [FLASH, FLASH + 0x4000, FLASH + 0x8000, FLASH + 0xC000]
    app_blocks = [a for a in kinds(sim, "write") if app.address <= a < app.end]
    assert app_blocks == [app.address, app.address + 18 * 1024]  # sparse: 2 of 10 blocks


async def test_disconnect_leaves_dfu_mode_and_the_next_connect_enters_it_again(
    programmer: Stm32DfuProgrammer, sim: SimDfuDevice, hub: SimUsbBus, factory: MockFactory
) -> None:
    await programmer.connect(F405)
    await programmer.disconnect()
    assert sim.attachment() is None  # left DFU mode: the application runs
    assert factory.pin(20).state == 0  # BOOT0 released
    await programmer.connect(F405)  # BOOT0 high and a reset pulse bring it back
    assert [s.state for s in factory.pin(21).states][-2:] == [False, True]


async def test_a_write_that_does_not_take_shows_in_the_read_back(
    programmer: Stm32DfuProgrammer, sim: SimDfuDevice
) -> None:
    region = Region("application", FLASH, 8192)
    image = os.urandom(region.size)
    await programmer.connect(F405)
    sim.faults.lost_writes = 1
    await programmer.write(region, image)  # every block was acknowledged
    back = await programmer.read(region)
    assert back[:2048] == b"\xff" * 2048
    assert back[2048:] == image[2048:]


async def test_locked_part_is_refused_and_left_intact(
    programmer: Stm32DfuProgrammer, sim: SimDfuDevice
) -> None:
    sim.board.chip.flash[:4] = b"\x12\x34\x56\x78"
    sim.board.chip.rdp = 0xBB
    with pytest.raises(TargetLocked):
        await programmer.connect(F405)
    assert sim.board.protected
    assert sim.board.chip.flash_bytes(FLASH, 4) == b"\x12\x34\x56\x78"
    assert not kinds(sim, "erase")


async def test_locked_part_is_recovered_when_allowed(
    programmer: Stm32DfuProgrammer, sim: SimDfuDevice
) -> None:
    sim.board.chip.flash[:4] = b"\x12\x34\x56\x78"
    sim.board.chip.rdp = 0xBB
    connection = await programmer.connect(ConnectOptions(target="stm32f4", recover_locked=True))
    assert connection.recovered_locked_part
    assert not sim.board.protected
    assert sim.board.chip.flash_bytes(FLASH, 4) == b"\xff" * 4
    assert await programmer.read_unique_id() == sim.board.chip.uid.hex()
    await programmer.write(Region("app", FLASH, 8), b"\x01" * 8)  # flash is known blank now
    assert not kinds(sim, "erase")


async def test_a_part_that_resets_before_answering_still_gets_locked(
    programmer: Stm32DfuProgrammer, sim: SimDfuDevice
) -> None:
    await programmer.connect(F405)
    sim.faults.silent_resets = 1
    await programmer.lock()  # the option bytes' GETSTATUS is lost with the reset
    assert sim.board.protected
    assert [op.kind for op in sim.history].count("option-bytes") == 1


async def test_wrong_target_is_a_target_mismatch(programmer: Stm32DfuProgrammer) -> None:
    with pytest.raises(ProtocolError) as caught:
        await programmer.connect(ConnectOptions(target="nrf52840"))
    assert caught.value.code is FailureCode.TARGET_MISMATCH
    assert "STM32F40x" in str(caught.value)


async def test_rewriting_a_region_that_shares_a_sector_is_refused(
    programmer: Stm32DfuProgrammer, sim: SimDfuDevice
) -> None:
    first = Region("application", FLASH + 0x4000, 0x1000)
    second = Region("manufacturing", FLASH + 0x5000, 0x100)  # also sector 1
    await programmer.connect(F405)
    await programmer.write(first, b"\x11" * first.size)
    await programmer.write(second, b"\x22" * second.size)
    with pytest.raises(EraseFailed) as caught:
        await programmer.write(first, b"\x33" * first.size)
    assert "sector 1" in str(caught.value)
    assert "manufacturing" in str(caught.value)
    assert sim.board.chip.flash_bytes(second.address, 4) == b"\x22" * 4


async def test_reserved_flash_is_never_erased(
    sim: SimDfuDevice, hub: SimUsbBus, factory: MockFactory
) -> None:
    calibration = Region("calibration", FLASH + 0xFF00, 0x100)  # end of sector 3
    unit = programmer_for(hub, factory, 1, reserved=[calibration])
    await unit.connect(F405)
    with pytest.raises(EraseFailed, match="calibration"):
        await unit.write(Region("app", FLASH + 0xC000, 0x100), b"\x00" * 0x100)
    await unit.disconnect()
    unit.shutdown()


async def test_valid_flag_needs_erased_flash(
    programmer: Stm32DfuProgrammer, sim: SimDfuDevice
) -> None:
    sim.board.chip.flash[0xC000:0xC004] = b"\x00\x00\x00\x00"
    await programmer.connect(F405)
    with pytest.raises(WriteFailed) as caught:
        await programmer.set_valid_flag(ValidFlag("flash-word", FLASH + 0xC000, 1))
    assert caught.value.code is FailureCode.VALID_FLAG_FAILED


@pytest.mark.parametrize(("operation", "status", "code"), [
    ("write", Status.ERR_PROG, FailureCode.WRITE_FAILED),
    ("write", Status.ERR_VERIFY, FailureCode.VERIFY_MISMATCH),
    ("erase", Status.ERR_ERASE, FailureCode.ERASE_FAILED),
    ("erase", Status.ERR_CHECK_ERASED, FailureCode.ERASE_FAILED),
    ("set-address", Status.ERR_ADDRESS, FailureCode.PROTOCOL_ERROR),
])
async def test_an_error_status_fails_the_step_with_its_code_region_and_address(
    programmer: Stm32DfuProgrammer, sim: SimDfuDevice, operation: str, status: Status,
    code: FailureCode,
) -> None:
    await programmer.connect(F405)
    sim.faults.status_errors[operation] = status
    region = Region("application", FLASH + 0x4000, 4096)
    with pytest.raises(ProgrammerError) as caught:
        await programmer.write(region, os.urandom(region.size))
    assert caught.value.code is code
    assert caught.value.region == "application"
    assert caught.value.address == FLASH + 0x4000
    assert f"(err{status.name[4:]})" in str(caught.value)
    attached = sim.attachment()
    assert attached is not None
    assert attached.engine.state == State.DFU_IDLE  # the error was cleared once reported
    await programmer.write(region, b"\x00" * region.size)


async def test_one_stall_is_cleared_and_the_block_sent_again(
    programmer: Stm32DfuProgrammer, sim: SimDfuDevice
) -> None:
    await programmer.connect(F405)
    sim.faults.stall_requests[1] = 1  # the next DNLOAD
    image = os.urandom(4096)
    await programmer.write(Region("app", FLASH, 4096), image)
    assert await programmer.read(Region("app", FLASH, 4096)) == image


async def test_persistent_stalls_fail_as_errstalledpkt(
    programmer: Stm32DfuProgrammer, sim: SimDfuDevice
) -> None:
    await programmer.connect(F405)
    sim.faults.stall_requests[2] = 10  # every UPLOAD
    with pytest.raises(ProgrammerError) as caught:
        await programmer.read(Region("app", FLASH, 4096))
    assert caught.value.code is FailureCode.PROTOCOL_ERROR
    assert "errSTALLEDPKT" in str(caught.value)
    assert caught.value.address == FLASH


async def test_a_device_that_vanishes_mid_download_is_probe_lost(
    programmer: Stm32DfuProgrammer, sim: SimDfuDevice
) -> None:
    await programmer.connect(F405)
    sim.faults.vanish_after_blocks = 3
    with pytest.raises(ProbeLost) as caught:
        await programmer.write(Region("app", FLASH, 16 * 1024), os.urandom(16 * 1024))
    assert caught.value.code is FailureCode.PROBE_LOST
    assert caught.value.address == FLASH + 4096  # the third block
    assert len(kinds(sim, "write")) == 3


async def test_a_missing_device_is_probe_not_found(
    hub: SimUsbBus, factory: MockFactory
) -> None:
    unit = programmer_for(hub, factory, 7)
    with pytest.raises(ProbeNotFound, match=r"at port 1-1\.7 appeared"):
        await unit.connect(F405)
    unit.shutdown()


async def test_boards_on_one_hub_are_told_apart_by_port(
    hub: SimUsbBus, factory: MockFactory
) -> None:
    left, right = plug(hub, factory, 2, pins=(5, 6)), plug(hub, factory, 3, pins=(12, 13))
    units = [programmer_for(hub, factory, 2, pins=(5, 6)),
             programmer_for(hub, factory, 3, pins=(12, 13))]
    images = [os.urandom(4096), os.urandom(4096)]

    async def program(unit: Stm32DfuProgrammer, image: bytes) -> str:
        await unit.connect(F405)
        await unit.write(Region("app", FLASH, len(image)), image)
        uid = await unit.read_unique_id()
        await unit.disconnect()
        unit.shutdown()
        return uid

    uids = await asyncio.gather(*(program(u, i) for u, i in zip(units, images, strict=True)))
    assert uids == [left.board.chip.uid.hex(), right.board.chip.uid.hex()]
    assert left.board.chip.flash_bytes(FLASH, 4096) == images[0]
    assert right.board.chip.flash_bytes(FLASH, 4096) == images[1]


async def test_two_matching_boards_and_no_port_are_refused(
    hub: SimUsbBus, factory: MockFactory
) -> None:
    plug(hub, factory, 2, pins=(5, 6))
    plug(hub, factory, 3, pins=(5, 6))
    unit = Stm32DfuProgrammer(boot0_pin=5, nreset_pin=6, policy=QUICK, usb_backend=hub,
                              pin_factory=factory)
    with pytest.raises(ProbeNotFound, match="2 USB devices match 0483:df11"):
        await unit.connect(F405)
    unit.shutdown()


async def test_a_board_is_found_by_its_serial(hub: SimUsbBus, factory: MockFactory) -> None:
    device = plug(hub, factory, 2, pins=(5, 6))
    plug(hub, factory, 3, pins=(5, 6))
    unit = Stm32DfuProgrammer(serial=device.board.serial, boot0_pin=5, nreset_pin=6,
                              policy=QUICK, usb_backend=hub, pin_factory=factory)
    await unit.connect(F405)
    assert await unit.read_unique_id() == device.board.chip.uid.hex()
    await unit.disconnect()
    unit.shutdown()


async def test_abort_stops_an_operation_in_flight(hub: SimUsbBus, factory: MockFactory) -> None:
    slow = plug(hub, factory, 4, pins=(5, 6), timing=True)
    unit = programmer_for(hub, factory, 4, pins=(5, 6))
    await unit.connect(F405)
    region = Region("app", FLASH + 0x2_0000, 128 * 1024)  # a 1 s sector erase, then 64 blocks
    write = asyncio.create_task(unit.write(region, os.urandom(region.size)))
    for _ in range(500):  # until the erase is under way
        if kinds(slow, "erase"):
            break
        await asyncio.sleep(0.01)
    await unit.abort()
    with pytest.raises(ProgrammerAborted):
        await asyncio.wait_for(write, 5)  # a hang guard, not a timing claim
    with pytest.raises(ProgrammerAborted):
        await unit.read(region)
    await unit.disconnect()
    assert not kinds(slow, "write")  # the worker stopped before the first block
    await unit.connect(F405)  # a new connect clears the abort
    assert await unit.read_unique_id() == slow.board.chip.uid.hex()
    await unit.disconnect()
    unit.shutdown()


async def test_abort_does_not_wait_for_a_hung_transfer(
    programmer: Stm32DfuProgrammer, sim: SimDfuDevice
) -> None:
    await programmer.connect(F405)
    release = threading.Event()
    sim.faults.hang = release
    read = asyncio.create_task(programmer.read(Region("app", FLASH, 4096)))
    try:
        while not sim.faults.hanging.is_set():  # noqa: ASYNC110 (a thread's state: poll it)
            await asyncio.sleep(0.005)
        await programmer.abort()
        with pytest.raises(ProgrammerAborted):
            await asyncio.wait_for(read, 5)  # a hang guard, not a timing claim
        assert sim.faults.hanging.is_set()  # the transfer is still wedged: abort did not wait
    finally:
        release.set()
    await programmer.disconnect()  # the worker finishes the aborted read first, then lets go


async def test_poll_timeouts_are_waited_out(hub: SimUsbBus, factory: MockFactory) -> None:
    timed = plug(hub, factory, 5, pins=(5, 6), timing=True)
    unit = programmer_for(hub, factory, 5, pins=(5, 6))
    await unit.connect(F405)
    await unit.write(Region("app", FLASH, 4096), os.urandom(4096))  # a 250 ms erase, 2 blocks
    await unit.disconnect()
    unit.shutdown()
    assert len(kinds(timed, "write")) == 2
    assert timed.timing.early_polls == 0  # never asked before bwPollTimeout had passed


async def test_a_strapped_board_without_boot_lines(hub: SimUsbBus) -> None:
    device = hub.attach(SimDfuDevice(port_numbers=(1, 6), board=DfuBoard.blank()))
    unit = Stm32DfuProgrammer(usb_path="1-1.6", usb_backend=hub, policy=QUICK)
    await unit.connect(F405)
    assert await unit.read_unique_id() == device.board.chip.uid.hex()
    await unit.disconnect()
    unit.shutdown()


async def test_the_real_path_without_a_device_is_probe_not_found() -> None:
    """pyusb's own backend choice (libusb, if installed): no board here, so none is found."""
    unit = Stm32DfuProgrammer(usb_path="1-1.1", policy=DfuPolicy(enumerate_timeout_s=0.1))
    with pytest.raises(ProbeNotFound) as caught:
        await unit.connect(F405)
    assert caught.value.code is FailureCode.PROBE_NOT_FOUND
    unit.shutdown()


def test_a_programmer_for_a_real_slot_pickles_before_it_connects() -> None:
    """Plain settings only, so a worker process can be handed one (issue 10)."""
    unit = Stm32DfuProgrammer(usb_path="1-1.2", boot0_pin=5, nreset_pin=6,
                              reserved=[Region("calibration", FLASH + 0xC000, 256)])
    copy = pickle.loads(pickle.dumps(unit))
    assert isinstance(copy, Stm32DfuProgrammer)


async def test_the_serial_string_is_the_chip_id_where_the_rom_keeps_the_uid_to_itself(
    programmer: Stm32DfuProgrammer, sim: SimDfuDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dfu_parts, "DFU_PARTS", (dfu_parts.DfuPart(STM32F40X,
                                                                   uid_over_dfu=False),))
    await programmer.connect(F405)
    assert await programmer.read_unique_id() == sim.board.serial.lower()
    assert UID_ADDRESS not in kinds(sim, "set-address")


async def test_mass_erase_through_the_dfuse_commands(hub: SimUsbBus) -> None:
    sim = hub.attach(SimDfuDevice(port_numbers=(1, 8), board=DfuBoard.blank()))  # strapped
    sim.board.chip.flash[0x2_0000:0x2_0004] = b"\x00" * 4
    device = usb.core.find(backend=hub)
    dfuse = DfuseCommands(DfuInterface(device, interface=0, abort=threading.Event(),
                                       policy=QUICK), transfer_size=2048)
    dfuse.mass_erase()
    assert sim.board.chip.flash_bytes(FLASH + 0x2_0000, 4) == b"\xff" * 4
    assert [op.kind for op in sim.history] == ["mass-erase"]
    usb.util.dispose_resources(device)
