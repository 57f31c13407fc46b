"""Finding one DFU device on the USB bus, and reading what it declares about itself.

A slot names its device by VID:PID and, where several boards hang off one hub, by the USB port
path (``1-1.3``, as dfu-util's ``--path``) and/or the serial number string. ST's ROM bootloader
derives its serial string from the chip's unique id, so on a production line it changes with every
board: a panel fixture tells its slots apart by port path; a serial suits a device that keeps its
own (a DFU adapter, a bench board). The backend is pyusb's own mechanism: ``None`` is libusb.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import usb.core
import usb.util

from agent.errors import ProbeNotFound, ProgrammerAborted, ProtocolError
from agent.hw.dfu import usb_failure

DFU_CLASS, DFU_SUBCLASS, DFU_MODE_PROTOCOL = 0xFE, 0x01, 0x02
DFU_FUNCTIONAL = 0x21  # descriptor type of the DFU functional descriptor
DFUSE_VERSION = 0x011A
_FIND_INTERVAL_S = 0.02
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceSelector:
    """Which device is this slot's: VID:PID, plus port path and/or serial string when given."""

    vid: int
    pid: int
    serial: str | None = None
    path: str | None = None

    def __str__(self) -> str:
        text = f"{self.vid:04x}:{self.pid:04x}"
        if self.serial is not None:
            text += f" serial {self.serial}"
        if self.path is not None:
            text += f" at port {self.path}"
        return text


@dataclass(frozen=True, slots=True)
class FunctionalDescriptor:
    """The DFU functional descriptor (DFU 1.1 section 4.1.3)."""

    attributes: int
    detach_timeout_ms: int
    transfer_size: int
    version: int

    @property
    def can_upload(self) -> bool:
        """bitCanUpload: the device serves UPLOAD (read-back)."""
        return bool(self.attributes & 0x02)

    @property
    def can_download(self) -> bool:
        """bitCanDnload: the device serves DNLOAD."""
        return bool(self.attributes & 0x01)


@dataclass(frozen=True, slots=True)
class AltSetting:
    """One alternate setting of the DFU interface and the name its string descriptor gives it."""

    interface: int
    alternate: int
    name: str


@dataclass(frozen=True, slots=True)
class DfuDescription:
    """What a DFU-mode device declares: its functional descriptor, alt settings and serial."""

    functional: FunctionalDescriptor
    alternates: tuple[AltSetting, ...]
    serial: str

    def alternate(self, name: str) -> AltSetting:
        """The alt setting whose layout name is ``name`` (``@Internal Flash  /...``)."""
        for alt in self.alternates:
            if alt.name.lstrip("@").split("/")[0].strip() == name:
                return alt
        names = [alt.name for alt in self.alternates]
        raise ProtocolError(f"the device has no alt setting named {name!r} (it has {names})")


def port_path(device: Any) -> str | None:
    """The device's port path as dfu-util writes it: ``<bus>-<port>.<port>...``."""
    ports = getattr(device, "port_numbers", None)
    if device.bus is None or not ports:
        return None
    return f"{device.bus}-{'.'.join(str(port) for port in ports)}"


def find_device(selector: DeviceSelector, backend: Any) -> Any | None:
    """The one device ``selector`` names, None when absent; more than one is an error."""
    try:
        candidates = list(usb.core.find(find_all=True, backend=backend,
                                        idVendor=selector.vid, idProduct=selector.pid))
    except usb.core.NoBackendError:
        raise ProbeNotFound("no USB backend: libusb-1.0 is not installed "
                            "(Debian: apt install libusb-1.0-0)") from None
    if selector.path is not None:
        candidates = [device for device in candidates if port_path(device) == selector.path]
    if selector.serial is not None:
        candidates = [device for device in candidates if _serial(device) == selector.serial]
    if len(candidates) > 1:
        paths = sorted(str(port_path(device)) for device in candidates)
        raise ProbeNotFound(f"{len(candidates)} USB devices match {selector} (ports {paths}): "
                            "give the slot a usb_path or a serial that tells them apart")
    return candidates[0] if candidates else None


def wait_for_device(
    selector: DeviceSelector,
    backend: Any,
    *,
    timeout_s: float,
    abort: threading.Event,
    unlike: tuple[int | None, int | None] | None = None,
) -> Any:
    """Wait until the device appears (after a reset it takes a moment to enumerate).

    ``unlike``: (bus, address) of an instance that is about to reset; it does not count, since
    a device that re-enumerates gets a new address.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        device = find_device(selector, backend)
        if device is not None and (unlike is None or (device.bus, device.address) != unlike):
            return device
        if time.monotonic() >= deadline:
            break
        if abort.wait(_FIND_INTERVAL_S):
            raise ProgrammerAborted("waiting for the DFU device: aborted")
    raise ProbeNotFound(f"no USB DFU device {selector} appeared within {timeout_s:g} s: "
                        "check DUT power, the USB cable and the BOOT0 strap")


def describe(device: Any) -> DfuDescription:
    """Read the functional descriptor and every DFU alt setting's name from the device."""
    try:
        configuration = device[0]
        interfaces = [intf for intf in configuration if intf.bInterfaceClass == DFU_CLASS
                      and intf.bInterfaceSubClass == DFU_SUBCLASS]
        if not interfaces:
            raise ProtocolError(f"{device.idVendor:04x}:{device.idProduct:04x} has no DFU "
                                "interface (class 0xFE, subclass 0x01)")
        if any(intf.bInterfaceProtocol != DFU_MODE_PROTOCOL for intf in interfaces):
            raise ProtocolError("the device is in run-time mode (interface protocol 1), not in "
                                "DFU mode: enter the bootloader first (BOOT0 high and reset)")
        functional = _functional(configuration, interfaces)
        alternates = tuple(
            AltSetting(intf.bInterfaceNumber, intf.bAlternateSetting,
                       usb.util.get_string(device, intf.iInterface) or "")
            for intf in interfaces
        )
        serial = _serial(device) or ""
    except usb.core.USBError as error:
        raise usb_failure(error, "reading the DFU descriptors") from error
    return DfuDescription(functional=functional, alternates=alternates, serial=serial)


def _functional(configuration: Any, interfaces: list[Any]) -> FunctionalDescriptor:
    """The functional descriptor; libusb files it with the alt setting it follows."""
    for extra in [configuration.extra_descriptors, *(i.extra_descriptors for i in interfaces)]:
        raw = bytes(extra)
        while len(raw) >= 2 and raw[0] >= 2:
            if raw[1] == DFU_FUNCTIONAL:
                return _parse_functional(raw[: raw[0]])
            raw = raw[raw[0] :]
    raise ProtocolError("the DFU interface has no DFU functional descriptor (type 0x21)")


def _parse_functional(raw: bytes) -> FunctionalDescriptor:
    if len(raw) < 7:
        raise ProtocolError(f"DFU functional descriptor {raw.hex()}: {len(raw)} bytes, "
                            "expected 7 (DFU 1.0) or 9 (DFU 1.1)")
    version = int.from_bytes(raw[7:9], "little") if len(raw) >= 9 else 0x0100
    functional = FunctionalDescriptor(
        attributes=raw[2],
        detach_timeout_ms=int.from_bytes(raw[3:5], "little"),
        transfer_size=int.from_bytes(raw[5:7], "little"),
        version=version,
    )
    if functional.transfer_size == 0:
        raise ProtocolError("DFU functional descriptor declares wTransferSize 0")
    return functional


def _serial(device: Any) -> str | None:
    """The serial number string; None when the device has none or does not answer for it."""
    if not device.iSerialNumber:
        return None
    try:
        return str(usb.util.get_string(device, device.iSerialNumber))
    except (usb.core.USBError, ValueError):
        log.debug("no serial number string from the device at %s", port_path(device),
                  exc_info=True)
        return None
