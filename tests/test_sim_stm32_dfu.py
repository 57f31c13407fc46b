"""The simulated STM32F4 DFU bootloader, driven through plain pyusb on its simulated bus."""

from __future__ import annotations

import errno
import time
from typing import Any

import pytest
import usb.core
import usb.util
from gpiozero import DigitalOutputDevice
from gpiozero.pins.mock import MockFactory

from agent.sim.stm32_dfu import BootLines, DfuBoard, DfuTiming, SimDfuDevice, SimUsbBus
from agent.sim.stm32_dfu.protocol import Request, State, Status

OUT, IN = 0x21, 0xA1
FLASH, UID, OPTION_BYTES = 0x0800_0000, 0x1FFF_7A10, 0x1FFF_C000


def find(bus: SimUsbBus) -> Any:
    """The device, once it has enumerated (with the timing model on, a part takes 0.1 s)."""
    for _ in range(100):
        device = usb.core.find(backend=bus, idVendor=0x0483, idProduct=0xDF11)
        if device is not None:
            return device
        time.sleep(0.01)
    raise AssertionError("the simulated device never enumerated")


def status(device: Any) -> tuple[Status, int, State]:
    raw = bytes(device.ctrl_transfer(IN, Request.GETSTATUS, 0, 0, 6))
    return Status(raw[0]), int.from_bytes(raw[1:4], "little"), State(raw[4])


def download(device: Any, block: int, data: bytes) -> list[tuple[Status, int, State]]:
    """DNLOAD, then GETSTATUS until the device is no longer busy; every answer."""
    device.ctrl_transfer(OUT, Request.DNLOAD, block, 0, data)
    answers = [status(device)]
    while answers[-1][2] == State.DNBUSY:
        answers.append(status(device))
    return answers


def set_address(device: Any, address: int) -> None:
    assert download(device, 0, b"\x21" + address.to_bytes(4, "little"))[-1][2] == State.DNLOAD_IDLE


def upload(device: Any, address: int, size: int) -> bytes:
    set_address(device, address)
    device.ctrl_transfer(OUT, Request.ABORT, 0, 0, None)  # UPLOAD is served from dfuIDLE
    data = bytes(device.ctrl_transfer(IN, Request.UPLOAD, 2, 0, size))
    device.ctrl_transfer(OUT, Request.ABORT, 0, 0, None)  # and DNLOAD is not from UPLOAD-IDLE
    return data


@pytest.fixture
def bus() -> SimUsbBus:
    return SimUsbBus()


@pytest.fixture
def board(bus: SimUsbBus) -> SimDfuDevice:
    return bus.attach(SimDfuDevice(port_numbers=(1, 2), board=DfuBoard.blank(bytes(range(12)))))


def test_it_enumerates_as_st_s_dfu_bootloader(bus: SimUsbBus, board: SimDfuDevice) -> None:
    device = find(bus)
    assert (device.bcdDevice, device.bMaxPacketSize0, device.port_numbers) == (0x2200, 64, (1, 2))
    # ST's USB library: hex(UID0 + UID2), then the top half of UID1
    assert device.serial_number == "0E0C0A08" + "0706" == board.board.serial
    names = [usb.util.get_string(device, intf.iInterface) for intf in device[0]]
    assert names[0] == "@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg"
    assert names[1].startswith("@Option Bytes")
    alternates = list(device[0])
    assert [a.bInterfaceProtocol for a in alternates] == [2, 2, 2, 2]
    functional = bytes(alternates[-1].extra_descriptors)  # where libusb files it
    assert functional == bytes([9, 0x21, 0x0B, 255, 0, 0x00, 0x08, 0x1A, 0x01])


def test_a_block_is_written_at_the_pointer_plus_its_number(
    bus: SimUsbBus, board: SimDfuDevice
) -> None:
    device = find(bus)
    assert download(device, 0, b"\x41" + FLASH.to_bytes(4, "little"))[-1][2] == State.DNLOAD_IDLE
    set_address(device, FLASH)
    answers = download(device, 4, b"\x5a" * 2048)  # block 4: pointer + 2 * 2048
    assert [a[2] for a in answers] == [State.DNBUSY, State.DNLOAD_IDLE]
    assert board.board.chip.flash_bytes(FLASH + 4096, 2048) == b"\x5a" * 2048
    assert board.board.chip.flash_bytes(FLASH, 4096) == b"\xff" * 4096
    assert [op.kind for op in board.history] == ["erase", "set-address", "write"]


def test_a_request_the_state_forbids_is_stalled_and_leaves_an_error(
    bus: SimUsbBus, board: SimDfuDevice
) -> None:
    device = find(bus)
    set_address(device, FLASH)  # now in dfuDNLOAD-IDLE, where UPLOAD is not allowed
    with pytest.raises(usb.core.USBError) as caught:
        device.ctrl_transfer(IN, Request.UPLOAD, 2, 0, 16)
    assert caught.value.errno == errno.EPIPE
    assert status(device) == (Status.ERR_STALLEDPKT, 0, State.DFU_ERROR)
    device.ctrl_transfer(OUT, Request.CLRSTATUS, 0, 0, None)
    assert status(device) == (Status.OK, 0, State.DFU_IDLE)


def test_an_address_outside_the_alt_setting_ends_in_err_target(
    bus: SimUsbBus, board: SimDfuDevice
) -> None:
    device = find(bus)
    answers = download(device, 0, b"\x41" + (0x0900_0000).to_bytes(4, "little"))
    assert answers[-1] == (Status.ERR_TARGET, 0, State.DFU_ERROR)


def test_readout_protection_takes_effect_at_the_reset_the_option_bytes_write_causes(
    bus: SimUsbBus, board: SimDfuDevice
) -> None:
    device = find(bus)
    first_address = device.address
    assert upload(device, UID, 12) == bytes(range(12))
    device.set_interface_altsetting(0, 1)  # option bytes
    options = bytearray(upload(device, OPTION_BYTES, 16))
    assert options[1] == 0xAA  # RDP level 0
    options[1] = 0xBB
    set_address(device, OPTION_BYTES)
    device.ctrl_transfer(OUT, Request.DNLOAD, 2, 0, bytes(options))
    assert status(device)[2] == State.DNBUSY  # the last answer: it programs, then resets
    with pytest.raises(usb.core.USBError) as caught:
        status(device)
    assert caught.value.errno == errno.ENODEV
    usb.util.dispose_resources(device)
    again = find(bus)
    assert again.address != first_address  # a new enumeration
    with pytest.raises(usb.core.USBError):
        upload(again, UID, 12)  # a locked part refuses UPLOAD
    assert status(again) == (Status.ERR_VENDOR, 0, State.DFU_ERROR)
    again.ctrl_transfer(OUT, Request.CLRSTATUS, 0, 0, None)
    answers = download(again, 0, b"\x41" + FLASH.to_bytes(4, "little"))
    assert answers[-1][0] == Status.ERR_VENDOR  # nor does it erase


def test_option_bytes_written_do_not_protect_before_a_reset() -> None:
    board = DfuBoard.blank()
    assert board.write_option_bytes(OPTION_BYTES, bytes([0xED, 0xBB]) + bytes(14))
    assert not board.protected
    board.reset()
    assert board.protected


def test_option_bytes_back_to_level_0_mass_erase_first() -> None:
    board = DfuBoard.blank()
    board.chip.flash[:4] = b"\x12\x34\x56\x78"
    board.chip.rdp = 0xBB
    assert board.write_option_bytes(OPTION_BYTES, bytes([0xED, 0xAA]) + bytes(14))
    board.reset()
    assert not board.protected
    assert board.chip.flash_bytes(FLASH, 4) == b"\xff" * 4  # the secret went with the lock
    board.chip.rdp = 0xCC  # level 2 is for good
    assert not board.write_option_bytes(OPTION_BYTES, bytes([0xED, 0xAA]) + bytes(14))


def test_read_unprotect_mass_erases_and_unlocks(bus: SimUsbBus, board: SimDfuDevice) -> None:
    board.board.chip.flash[:4] = b"\x12\x34\x56\x78"
    board.board.chip.rdp = 0xBB
    device = find(bus)
    device.ctrl_transfer(OUT, Request.DNLOAD, 0, 0, b"\x92")
    assert status(device)[2] == State.DNBUSY
    usb.util.dispose_resources(device)
    again = find(bus)
    assert not board.board.protected
    assert upload(again, FLASH, 4) == b"\xff" * 4


def test_leaving_dfu_mode_starts_the_application(bus: SimUsbBus, board: SimDfuDevice) -> None:
    device = find(bus)
    set_address(device, FLASH)
    device.ctrl_transfer(OUT, Request.DNLOAD, 2, 0, None)  # zero length: leave
    assert status(device)[2] == State.MANIFEST
    assert usb.core.find(backend=bus, idVendor=0x0483) is None
    board.reset()  # BOOT0 strapped high here: back in the bootloader
    assert usb.core.find(backend=bus, idVendor=0x0483) is not None


def test_power_and_the_boot_lines_decide_whether_it_is_on_the_bus(bus: SimUsbBus) -> None:
    factory = MockFactory()
    power = {"on": False}
    bus.attach(SimDfuDevice(port_numbers=(1, 3), board=DfuBoard.blank(),
                            lines=BootLines(factory, boot0=5, nreset=6),
                            powered=lambda: power["on"]))
    boot0 = DigitalOutputDevice(5, initial_value=False, pin_factory=factory)
    nreset = DigitalOutputDevice(6, active_high=False, initial_value=False, pin_factory=factory)
    assert usb.core.find(backend=bus) is None  # no power
    power["on"] = True
    assert usb.core.find(backend=bus) is None  # BOOT0 low at power-on: the application runs
    boot0.on()
    nreset.on()
    assert usb.core.find(backend=bus) is None  # held in reset
    nreset.off()
    device = usb.core.find(backend=bus)
    assert device is not None
    power["on"] = False
    with pytest.raises(usb.core.USBError) as caught:
        status(device)
    assert caught.value.errno == errno.ENODEV


def test_the_timing_model_reports_the_work_as_poll_timeouts(bus: SimUsbBus) -> None:
    timed = bus.attach(SimDfuDevice(port_numbers=(1, 4), board=DfuBoard.blank(),
                                    timing=DfuTiming(enabled=True)))
    device = find(bus)
    erase = download(device, 0, b"\x41" + FLASH.to_bytes(4, "little"))
    assert erase[0][1] == 250  # RM0090: a 16 KiB sector, x32
    set_address(device, FLASH)
    write = download(device, 2, b"\x00" * 2048)
    assert write[0][1] == 9  # 512 words at 16 us, in whole milliseconds
    assert timed.timing.early_polls == 2  # this host did not wait: the device made it
    plain = SimDfuDevice(port_numbers=(1, 5), board=DfuBoard.blank())
    assert plain.timing.poll_timeout_ms(1.0) == 0  # the model off (tests): nothing waits
