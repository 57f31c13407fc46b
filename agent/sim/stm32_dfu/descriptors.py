"""The USB descriptors of an STM32F4 in its DFU ROM bootloader, as bytes and as pyusb wants them.

Device 0483:DF11, bcdDevice 0x2200, one configuration with one DFU-mode interface (class 0xFE,
subclass 1, protocol 2) in four alt settings named by their DfuSe memory layouts, and the DFU
functional descriptor (bmAttributes 0x0B: will detach, can upload, can download; wTransferSize
2048; DfuSe version 0x011A) after the last alt setting, where libusb files it.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from agent.sim.stm32_dfu.board import ALT_NAMES

VID, PID, BCD_DEVICE = 0x0483, 0xDF11, 0x2200
TRANSFER_SIZE = 2048
LANGID_EN_US = 0x0409
MANUFACTURER, PRODUCT, SERIAL, FIRST_ALT_STRING = 1, 2, 3, 4
FULL_SPEED = 2  # libusb_speed: LIBUSB_SPEED_FULL
DEVICE, CONFIGURATION, STRING, INTERFACE, DFU_FUNCTIONAL = 1, 2, 3, 4, 0x21
_STRINGS = {MANUFACTURER: "STMicroelectronics", PRODUCT: "STM32  BOOTLOADER"}


def device_descriptor() -> bytes:
    """The 18-byte device descriptor."""
    return bytes([18, DEVICE, 0x00, 0x02, 0, 0, 0, 64]) + _u16(VID) + _u16(PID) + _u16(
        BCD_DEVICE
    ) + bytes([MANUFACTURER, PRODUCT, SERIAL, 1])


def functional_descriptor() -> bytes:
    """The DFU functional descriptor (DFU 1.1 section 4.1.3)."""
    return bytes([9, DFU_FUNCTIONAL, 0x0B]) + _u16(255) + _u16(TRANSFER_SIZE) + _u16(0x011A)


def interface_descriptor(alternate: int) -> bytes:
    """The interface descriptor of one alt setting."""
    return bytes([9, INTERFACE, 0, alternate, 0, 0xFE, 0x01, 0x02, FIRST_ALT_STRING + alternate])


def configuration_descriptor() -> bytes:
    """The whole configuration: its header, every alt setting, the functional descriptor."""
    body = b"".join(interface_descriptor(n) for n in range(len(ALT_NAMES)))
    body += functional_descriptor()
    return bytes([9, CONFIGURATION]) + _u16(9 + len(body)) + bytes([1, 1, 0, 0xC0, 50]) + body


def string_descriptor(index: int, serial: str) -> bytes | None:
    """String ``index`` (0: the language ids), None for an index the device does not have."""
    if index == 0:
        return bytes([4, STRING]) + _u16(LANGID_EN_US)
    if index == SERIAL:
        text = serial
    elif index in _STRINGS:
        text = _STRINGS[index]
    elif 0 <= index - FIRST_ALT_STRING < len(ALT_NAMES):
        text = ALT_NAMES[index - FIRST_ALT_STRING]
    else:
        return None
    encoded = text.encode("utf-16-le")
    return bytes([2 + len(encoded), STRING]) + encoded


def device_fields(*, bus: int, address: int, port_numbers: tuple[int, ...]) -> Any:
    """The device descriptor as pyusb's backend interface returns it, with the bus position."""
    raw = device_descriptor()
    return SimpleNamespace(
        bLength=raw[0], bDescriptorType=raw[1], bcdUSB=0x0200, bDeviceClass=0,
        bDeviceSubClass=0, bDeviceProtocol=0, bMaxPacketSize0=raw[7], idVendor=VID,
        idProduct=PID, bcdDevice=BCD_DEVICE, iManufacturer=MANUFACTURER, iProduct=PRODUCT,
        iSerialNumber=SERIAL, bNumConfigurations=1, bus=bus, address=address,
        port_number=port_numbers[-1], port_numbers=port_numbers, speed=FULL_SPEED,
    )


def configuration_fields() -> Any:
    """The configuration descriptor's fields (no extra descriptors of its own)."""
    raw = configuration_descriptor()
    return SimpleNamespace(
        bLength=9, bDescriptorType=CONFIGURATION, wTotalLength=len(raw), bNumInterfaces=1,
        bConfigurationValue=1, iConfiguration=0, bmAttributes=0xC0, bMaxPower=50,
        extra_descriptors=[],
    )


def interface_fields(interface: int, alternate: int) -> Any:
    """One alt setting's fields; IndexError past the last, as pyusb's backends signal it."""
    if interface != 0 or not 0 <= alternate < len(ALT_NAMES):
        raise IndexError(f"no interface {interface} alt setting {alternate}")
    last = alternate == len(ALT_NAMES) - 1
    return SimpleNamespace(
        bLength=9, bDescriptorType=INTERFACE, bInterfaceNumber=0, bAlternateSetting=alternate,
        bNumEndpoints=0, bInterfaceClass=0xFE, bInterfaceSubClass=0x01, bInterfaceProtocol=0x02,
        iInterface=FIRST_ALT_STRING + alternate,
        extra_descriptors=list(functional_descriptor()) if last else [],
    )


def _u16(value: int) -> bytes:
    return value.to_bytes(2, "little")
