"""A simulated USB bus behind pyusb's own backend interface (``usb.backend.IBackend``).

pyusb's ``usb.core.find(backend=...)`` takes any object that implements IBackend; libusb is just
the default one. This bus is another: the DFU client, pydfuutil or any pyusb program runs on it
unchanged, down to the control transfers, and gets the errors libusb would give (a stall is a pipe
error, a device that left is "no such device", a busy interface is "resource busy"). Several
simulated devices hang off it at their own port paths, as several boards on one hub do.
"""

from __future__ import annotations

import errno
import threading
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import usb.backend
import usb.core

from agent.sim.stm32_dfu import descriptors
from agent.sim.stm32_dfu.device import Attachment, SimDfuDevice
from agent.sim.stm32_dfu.engine import DeviceGone, Stall

# libusb's error codes, which pyusb's libusb1 backend raises as USBError.backend_error_code
_ERROR_NO_DEVICE, _ERROR_BUSY, _ERROR_PIPE = -4, -6, -9


@dataclass(eq=False)
class _Handle:
    """An open device, as libusb_open gives one."""

    attachment: Attachment
    claimed: set[int] = field(default_factory=set)


class SimUsbBus(usb.backend.IBackend):  # type: ignore[misc]
    """USB bus ``bus_number`` with simulated DFU devices; use it as pyusb's ``backend``."""

    def __init__(self, bus_number: int = 1) -> None:
        self.bus_number = bus_number
        self.devices: list[SimDfuDevice] = []
        self._claims: dict[int, _Handle] = {}  # id(attachment) -> the handle holding interface 0
        self._lock = threading.Lock()  # guards the claims; each device serialises its transfers

    def attach(self, device: SimDfuDevice) -> SimDfuDevice:
        """Plug ``device`` into the hub at its port path."""
        taken = {d.port_numbers for d in self.devices}
        if device.port_numbers in taken:
            raise ValueError(f"port {self.path(device)} already holds a device")
        self.devices.append(device)
        return device

    def path(self, device: SimDfuDevice) -> str:
        """The port path dfu-util and the slot configuration use, e.g. ``1-1.2``."""
        return f"{self.bus_number}-{'.'.join(str(port) for port in device.port_numbers)}"

    # --- enumeration and descriptors -------------------------------------------------------------

    def enumerate_devices(self) -> Iterator[Attachment]:
        found = [device.attachment() for device in self.devices]
        return iter([attachment for attachment in found if attachment is not None])

    def get_parent(self, dev: Attachment) -> None:
        return None

    def get_device_descriptor(self, dev: Attachment) -> Any:
        return descriptors.device_fields(bus=self.bus_number, address=dev.address,
                                         port_numbers=dev.owner.port_numbers)

    def get_configuration_descriptor(self, dev: Attachment, config: int) -> Any:
        if config != 0:
            raise IndexError(f"no configuration {config}")
        return descriptors.configuration_fields()

    def get_interface_descriptor(self, dev: Attachment, intf: int, alt: int, config: int) -> Any:
        if config != 0:
            raise IndexError(f"no configuration {config}")
        return descriptors.interface_fields(intf, alt)

    def get_endpoint_descriptor(self, dev: Attachment, ep: int, intf: int, alt: int,
                                config: int) -> Any:
        raise IndexError("a DFU interface has no endpoints but endpoint 0")

    # --- handles and interfaces ------------------------------------------------------------------

    def open_device(self, dev: Attachment) -> _Handle:
        if dev.owner.attachment() is not dev:
            raise _gone()
        return _Handle(dev)

    def close_device(self, dev_handle: _Handle) -> None:
        for interface in list(dev_handle.claimed):
            self.release_interface(dev_handle, interface)

    def set_configuration(self, dev_handle: _Handle, config_value: int) -> None:
        self._transfer(dev_handle, 0x00, 9, config_value, 0, None, 0)

    def get_configuration(self, dev_handle: _Handle) -> int:
        return 1

    def claim_interface(self, dev_handle: _Handle, intf: int) -> None:
        with self._lock:
            holder = self._claims.get(id(dev_handle.attachment))
            if holder is not None and holder is not dev_handle:
                raise usb.core.USBError("Resource busy", _ERROR_BUSY, errno.EBUSY)
            self._claims[id(dev_handle.attachment)] = dev_handle
            dev_handle.claimed.add(intf)

    def release_interface(self, dev_handle: _Handle, intf: int) -> None:
        with self._lock:
            if self._claims.get(id(dev_handle.attachment)) is dev_handle:
                del self._claims[id(dev_handle.attachment)]
            dev_handle.claimed.discard(intf)

    def set_interface_altsetting(self, dev_handle: _Handle, intf: int, altsetting: int) -> None:
        self._transfer(dev_handle, 0x01, 11, altsetting, intf, None, 0)

    def reset_device(self, dev_handle: _Handle) -> None:
        dev_handle.attachment.owner.reset()

    def clear_halt(self, dev_handle: _Handle, ep: int) -> None:
        return None

    def is_kernel_driver_active(self, dev_handle: _Handle, intf: int) -> bool:
        return False

    def detach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        return None

    def attach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        return None

    # --- transfers -------------------------------------------------------------------------------

    def ctrl_transfer(self, dev_handle: _Handle, request_type: int, request: int, value: int,
                      index: int, data: array[int], timeout: int) -> int:
        # pyusb passes the setup fields positionally (bmRequestType, bRequest, wValue, wIndex)
        length = len(data) * data.itemsize
        if request_type & 0x80 == 0:
            self._transfer(dev_handle, request_type, request, value, index, data.tobytes(),
                           length)
            return length
        answer = self._transfer(dev_handle, request_type, request, value, index, None, length)
        data[: len(answer)] = array(data.typecode, answer)
        return len(answer)

    def _transfer(self, handle: _Handle, request_type: int, request: int, value: int, index: int,
                  data: bytes | None, length: int) -> bytes:
        attachment = handle.attachment
        attachment.owner.faults.hold_if_hung()  # outside the device's lock, as a NAKing part
        try:
            return attachment.owner.control(attachment, (request_type, request, value, index),
                                            data, length)
        except Stall:
            raise usb.core.USBError("Pipe error", _ERROR_PIPE, errno.EPIPE) from None
        except DeviceGone:
            raise _gone() from None


def _gone() -> usb.core.USBError:
    return usb.core.USBError("No such device (it may have been disconnected)", _ERROR_NO_DEVICE,
                             errno.ENODEV)
