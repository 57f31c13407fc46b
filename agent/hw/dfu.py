"""The host side of USB DFU 1.1 on one claimed interface of a pyusb device.

Everything moves over the control endpoint. After each DNLOAD the host asks GETSTATUS; that starts
the device's work and returns ``bwPollTimeout``, the time the host must let pass before it asks
again (DFU 1.1 section 6.1.2): a device busy writing flash does not answer sooner, and some stall.
A device that reports an error stays in dfuERROR until CLRSTATUS.

Every method blocks: the programmer runs them on its slot's worker thread, never on the event loop.
Each transfer is preceded by a look at the slot's abort event, and poll waits sleep on that event,
so an aborted unit stops within one transfer.
"""

from __future__ import annotations

import contextlib
import errno
import threading
import time
from dataclasses import dataclass
from typing import Any

import usb.core

from agent.errors import (
    FailureCode,
    ProbeLost,
    ProbeNotFound,
    ProgrammerAborted,
    ProgrammerError,
    ProtocolError,
)
from agent.hw.dfu_status import DeviceStatus, DfuRequest, DfuState, DfuStatus, DfuStatusError

REQUEST_OUT = 0x21  # class request to an interface, host to device
REQUEST_IN = 0xA1  # class request to an interface, device to host
_LIBUSB_ERROR_IO, _LIBUSB_ERROR_ACCESS, _LIBUSB_ERROR_NO_DEVICE, _LIBUSB_ERROR_PIPE = -1, -3, -4, -9
_BUSY = (DfuState.DNBUSY, DfuState.DNLOAD_SYNC)
_FREE_ZERO_POLLS = 3  # back-to-back polls allowed when the device asks for no wait at all


@dataclass(frozen=True, slots=True)
class DfuPolicy:
    """Timeouts and retries of one DFU link."""

    request_timeout_ms: int = 5000
    busy_timeout_s: float = 40.0  # longest wait for one operation (STM32F4 mass erase: 32 s max)
    stall_retries: int = 2  # a stalled request is cleared and sent again this often
    enumerate_timeout_s: float = 5.0  # how long a device may take to (re)appear on the bus


class RequestStalled(ProtocolError):
    """The device answered a request with STALL (libusb's pipe error)."""


def usb_failure(error: usb.core.USBError, what: str) -> ProgrammerError:
    """What a pyusb error means for the unit: a vanished device is probe_lost."""
    code = getattr(error, "backend_error_code", None)
    number = getattr(error, "errno", None)
    if isinstance(error, usb.core.USBTimeoutError):
        return ProtocolError(f"{what}: the device did not answer in time ({error})",
                             code=FailureCode.TIMEOUT)
    if code == _LIBUSB_ERROR_PIPE or number == errno.EPIPE:
        return RequestStalled(f"{what}: the device stalled the request")
    if code in (_LIBUSB_ERROR_NO_DEVICE, _LIBUSB_ERROR_IO) or number in (errno.ENODEV, errno.EIO):
        return ProbeLost(f"{what}: the device left the bus ({error})")
    if code == _LIBUSB_ERROR_ACCESS or number == errno.EACCES:
        return ProbeNotFound(f"{what}: no permission to open the device; install the udev rule "
                             "for DFU devices (README, USB-DFU)")
    return ProtocolError(f"{what}: USB error {error}")


class DfuInterface:
    """One claimed DFU interface: class requests, status polling and recovery."""

    def __init__(
        self, device: Any, *, interface: int, abort: threading.Event, policy: DfuPolicy
    ) -> None:
        self.device = device
        self.interface = interface
        self.policy = policy
        self._abort = abort

    # --- single requests -------------------------------------------------------------------------

    def get_status(self, what: str = "GETSTATUS") -> DeviceStatus:
        """One GETSTATUS."""
        return DeviceStatus.parse(self._in(DfuRequest.GETSTATUS, 0, 6, what))

    def clear_status(self, what: str = "CLRSTATUS") -> None:
        """CLRSTATUS: dfuERROR -> dfuIDLE."""
        self._out(DfuRequest.CLRSTATUS, 0, None, what)

    def abort_to_idle(self, what: str = "ABORT") -> None:
        """ABORT, which ends an upload or download and returns to dfuIDLE."""
        self._out(DfuRequest.ABORT, 0, None, what)
        status = self.get_status(what)
        if status.state != DfuState.DFU_IDLE:
            raise ProtocolError(f"{what}: expected dfuIDLE after ABORT, the device is in {status}")

    def detach(self, timeout_ms: int = 1000) -> None:
        """DETACH: leave DFU mode (the device re-enumerates or waits for a USB reset)."""
        self._out(DfuRequest.DETACH, timeout_ms, None, "DETACH")

    def send_zero_length_download(self, block: int, what: str) -> None:
        """A DNLOAD without data: the end of a download, which starts manifestation."""
        self._out(DfuRequest.DNLOAD, block, None, what)

    def download_then_reset(self, block: int, data: bytes, what: str) -> DeviceStatus | None:
        """DNLOAD a request after which the device resets (option bytes, read unprotect).

        Only one GETSTATUS is asked: it starts the work and says how long it takes. The device
        then leaves the bus and cannot answer another; one already resetting may not answer this
        one either (gone, stalled or silent, by host controller): None then. The caller confirms
        the outcome after the part has come back.
        """
        self._out(DfuRequest.DNLOAD, block, data, what)
        try:
            status = self.get_status(what)
        except (ProbeLost, RequestStalled):
            return None
        except ProtocolError as error:
            if error.code is not FailureCode.TIMEOUT:
                raise
            return None
        if status.state == DfuState.DFU_ERROR:
            raise DfuStatusError(what, status.status)
        return status

    # --- exchanges -------------------------------------------------------------------------------

    def download(self, block: int, data: bytes, what: str) -> DeviceStatus:
        """DNLOAD one block and poll until the device has finished with it (dfuDNLOAD-IDLE)."""
        for attempt in range(self.policy.stall_retries + 1):
            try:
                self._out(DfuRequest.DNLOAD, block, data, what)
                return self.settle(what, expect=DfuState.DNLOAD_IDLE)
            except RequestStalled:
                self._after_stall(what, last_try=attempt == self.policy.stall_retries)
        raise AssertionError("unreachable")  # pragma: no cover (the last try raises)

    def upload(self, block: int, length: int, what: str) -> bytes:
        """UPLOAD one block of exactly ``length`` bytes."""
        for attempt in range(self.policy.stall_retries + 1):
            try:
                data = self._in(DfuRequest.UPLOAD, block, length, what)
            except RequestStalled:
                self._after_stall(what, last_try=attempt == self.policy.stall_retries)
                continue
            if len(data) != length:
                raise ProtocolError(f"{what}: the device sent {len(data)} of {length} bytes")
            return data
        raise AssertionError("unreachable")  # pragma: no cover (the last try raises)

    def settle(self, what: str, *, expect: DfuState) -> DeviceStatus:
        """Poll GETSTATUS, waiting ``bwPollTimeout`` each time, until the device is not busy."""
        deadline = time.monotonic() + self.policy.busy_timeout_s
        status = self._poll(what, previous=None)
        free_polls = _FREE_ZERO_POLLS
        while status.state in _BUSY:
            if time.monotonic() > deadline:
                raise ProtocolError(f"{what}: still busy after {self.policy.busy_timeout_s} s "
                                    f"({status})", code=FailureCode.TIMEOUT)
            wait_ms = status.poll_timeout_ms
            if wait_ms == 0:
                free_polls -= 1
                wait_ms = 0 if free_polls >= 0 else 1  # a device that never says how long
            self._sleep(wait_ms / 1000, what)
            status = self._poll(what, previous=status)
        if status.state == DfuState.DFU_ERROR:
            raise self._reported(what, status)
        if status.state != expect:
            raise ProtocolError(f"{what}: expected {expect.name}, the device is in {status}")
        return status

    def recover(self, what: str) -> None:
        """Bring the device to dfuIDLE from an error or an unfinished transfer."""
        status = self.get_status(what)
        if status.state in _BUSY:  # an operation of an earlier, interrupted session
            self._sleep(status.poll_timeout_ms / 1000, what)
            status = self._poll(what, previous=status)
        if status.state in (DfuState.APP_IDLE, DfuState.APP_DETACH):
            raise ProtocolError(f"{what}: the device is in run-time mode ({status}), not DFU mode")
        if status.state == DfuState.DFU_ERROR:
            self.clear_status(what)
        elif status.state != DfuState.DFU_IDLE:
            self.abort_to_idle(what)
            return
        status = self.get_status(what)
        if status.state != DfuState.DFU_IDLE:
            raise ProtocolError(f"{what}: cannot bring the device to dfuIDLE ({status})")

    # --- plumbing --------------------------------------------------------------------------------

    def _poll(self, what: str, *, previous: DeviceStatus | None) -> DeviceStatus:
        """GETSTATUS; a device that stalls it while busy (some STM32L4) is asked again later."""
        for _ in range(self.policy.stall_retries):
            try:
                return self.get_status(what)
            except RequestStalled:
                if previous is None or previous.state not in _BUSY:
                    raise
                self._sleep(max(previous.poll_timeout_ms, 1) / 1000, what)
        return self.get_status(what)

    def _after_stall(self, what: str, *, last_try: bool) -> None:
        """Learn why the device stalled; clear a transient stall, give up on anything else."""
        status = self.get_status(what)
        if status.status not in (DfuStatus.OK, DfuStatus.ERR_STALLEDPKT):
            raise self._reported(what, status)
        if last_try:
            raise DfuStatusError(f"{what} (stalled {self.policy.stall_retries + 1} times)",
                                 DfuStatus.ERR_STALLEDPKT)
        if status.state == DfuState.DFU_ERROR:
            self.clear_status(what)

    def _reported(self, what: str, status: DeviceStatus) -> DfuStatusError:
        """The error ``status`` reports, with the device cleared of it (best effort).

        Left in dfuERROR, the device would stall the next request and report this same status
        against it (ST's devices do not replace it with errSTALLEDPKT).
        """
        with contextlib.suppress(ProgrammerError):  # else the next operation recovers or fails
            self.clear_status(f"{what}: clear the error")
        return DfuStatusError(what, status.status)

    def _check_abort(self, what: str) -> None:
        if self._abort.is_set():
            raise ProgrammerAborted(f"{what}: aborted")

    def _sleep(self, seconds: float, what: str) -> None:
        if seconds > 0 and self._abort.wait(seconds):
            raise ProgrammerAborted(f"{what}: aborted")
        self._check_abort(what)

    def _out(self, request: DfuRequest, value: int, data: bytes | None, what: str) -> None:
        self._check_abort(what)
        try:
            self.device.ctrl_transfer(REQUEST_OUT, request, value, self.interface, data,
                                      self.policy.request_timeout_ms)
        except usb.core.USBError as error:
            raise usb_failure(error, what) from error

    def _in(self, request: DfuRequest, value: int, length: int, what: str) -> bytes:
        self._check_abort(what)
        try:
            answer = self.device.ctrl_transfer(REQUEST_IN, request, value, self.interface, length,
                                               self.policy.request_timeout_ms)
        except usb.core.USBError as error:
            raise usb_failure(error, what) from error
        return bytes(answer)
