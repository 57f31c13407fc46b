"""The words of USB DFU 1.1: requests, device states, status codes, and what each error means here.

A DFU device reports its state and the outcome of its last operation in the six bytes GETSTATUS
returns (DFU 1.1 section 6.1.2): bStatus, a 24-bit bwPollTimeout in milliseconds, bState and a
string index. Every status other than OK leaves the device in dfuERROR until CLRSTATUS. This module
turns such a status into the unit record's failure code, with a sentence an operator can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from agent.errors import FailureCode, ProgrammerError, ProtocolError


class DfuRequest(IntEnum):
    """Class-specific requests on the DFU interface (DFU 1.1 table 3.2)."""

    DETACH = 0
    DNLOAD = 1
    UPLOAD = 2
    GETSTATUS = 3
    CLRSTATUS = 4
    GETSTATE = 5
    ABORT = 6


class DfuState(IntEnum):
    """bState values (DFU 1.1 section 6.1.2)."""

    APP_IDLE = 0
    APP_DETACH = 1
    DFU_IDLE = 2
    DNLOAD_SYNC = 3
    DNBUSY = 4
    DNLOAD_IDLE = 5
    MANIFEST_SYNC = 6
    MANIFEST = 7
    MANIFEST_WAIT_RESET = 8
    UPLOAD_IDLE = 9
    DFU_ERROR = 10


class DfuStatus(IntEnum):
    """bStatus values (DFU 1.1 section 6.1.2); OK is the only one that is not an error."""

    OK = 0x00
    ERR_TARGET = 0x01
    ERR_FILE = 0x02
    ERR_WRITE = 0x03
    ERR_ERASE = 0x04
    ERR_CHECK_ERASED = 0x05
    ERR_PROG = 0x06
    ERR_VERIFY = 0x07
    ERR_ADDRESS = 0x08
    ERR_NOTDONE = 0x09
    ERR_FIRMWARE = 0x0A
    ERR_VENDOR = 0x0B
    ERR_USBR = 0x0C
    ERR_POR = 0x0D
    ERR_UNKNOWN = 0x0E
    ERR_STALLEDPKT = 0x0F


# Per status: the failure code it becomes and what it means on a fixture. errVENDOR is how ST's
# bootloader refuses memory access under readout protection (AN3156), hence target_locked.
STATUS_MEANING: dict[DfuStatus, tuple[FailureCode, str]] = {
    DfuStatus.ERR_TARGET: (
        FailureCode.PROTOCOL_ERROR,
        "the device refused the address: it is not memory this alt setting serves (errTARGET)",
    ),
    DfuStatus.ERR_FILE: (
        FailureCode.PROTOCOL_ERROR,
        "the device rejected the data as not meant for it (errFILE)",
    ),
    DfuStatus.ERR_WRITE: (
        FailureCode.WRITE_FAILED,
        "the device could not write the memory (errWRITE)",
    ),
    DfuStatus.ERR_ERASE: (FailureCode.ERASE_FAILED, "the memory erase failed (errERASE)"),
    DfuStatus.ERR_CHECK_ERASED: (
        FailureCode.ERASE_FAILED,
        "the memory does not read blank after the erase (errCHECK_ERASED)",
    ),
    DfuStatus.ERR_PROG: (FailureCode.WRITE_FAILED, "programming the memory failed (errPROG)"),
    DfuStatus.ERR_VERIFY: (
        FailureCode.VERIFY_MISMATCH,
        "the device's own check after programming failed (errVERIFY)",
    ),
    DfuStatus.ERR_ADDRESS: (
        FailureCode.PROTOCOL_ERROR,
        "the address is out of range for the device (errADDRESS)",
    ),
    DfuStatus.ERR_NOTDONE: (
        FailureCode.PROTOCOL_ERROR,
        "the device got the end of the download before it expected it (errNOTDONE)",
    ),
    DfuStatus.ERR_FIRMWARE: (
        FailureCode.PROTOCOL_ERROR,
        "the device finds its firmware corrupt and cannot leave DFU mode (errFIRMWARE)",
    ),
    DfuStatus.ERR_VENDOR: (
        FailureCode.TARGET_LOCKED,
        "the device refused for a vendor-specific reason; an STM32 does so under readout "
        "protection (errVENDOR)",
    ),
    DfuStatus.ERR_USBR: (
        FailureCode.PROBE_LOST,
        "the device saw an unexpected USB reset (errUSBR)",
    ),
    DfuStatus.ERR_POR: (
        FailureCode.PROBE_LOST,
        "the device saw an unexpected power-on reset: check DUT power and the cable (errPOR)",
    ),
    DfuStatus.ERR_UNKNOWN: (
        FailureCode.PROTOCOL_ERROR,
        "the device reports an error it does not name (errUNKNOWN)",
    ),
    DfuStatus.ERR_STALLEDPKT: (
        FailureCode.PROTOCOL_ERROR,
        "the device stalled a request it did not expect in its state (errSTALLEDPKT)",
    ),
}


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """One GETSTATUS answer."""

    status: DfuStatus
    poll_timeout_ms: int
    state: DfuState
    string_index: int = 0

    @classmethod
    def parse(cls, raw: bytes) -> DeviceStatus:
        """Decode the six GETSTATUS bytes; a short or unknown answer is a protocol error."""
        if len(raw) != 6:
            raise ProtocolError(f"GETSTATUS answered {len(raw)} bytes ({raw.hex()}), expected 6")
        try:
            status, state = DfuStatus(raw[0]), DfuState(raw[4])
        except ValueError:
            raise ProtocolError(
                f"GETSTATUS answered status 0x{raw[0]:02X} state {raw[4]}: expected a DFU 1.1 "
                "status (0x00..0x0F) and state (0..10)"
            ) from None
        return cls(status, int.from_bytes(raw[1:4], "little"), state, raw[5])

    def __str__(self) -> str:
        return f"{self.state.name} / {self.status.name}, poll {self.poll_timeout_ms} ms"


class DfuStatusError(ProgrammerError):
    """The device reported an error status; ``code`` follows :data:`STATUS_MEANING`."""

    def __init__(
        self,
        what: str,
        status: DfuStatus,
        *,
        region: str | None = None,
        address: int | None = None,
    ) -> None:
        self.what = what
        self.status = status
        code, meaning = STATUS_MEANING.get(
            status, (FailureCode.PROTOCOL_ERROR, f"status 0x{status:02X}")
        )
        super().__init__(f"{what}: {meaning}", region=region, address=address, code=code)


def placed(error: ProgrammerError, *, region: str | None, address: int | None) -> ProgrammerError:
    """``error`` of the DFU layer, now naming the region and address it happened at.

    An error that already names a place is returned as it is.
    """
    if error.region is not None or error.address is not None:
        return error
    if isinstance(error, DfuStatusError):
        return DfuStatusError(error.what, error.status, region=region, address=address)
    return type(error)(str(error), region=region, address=address, code=error.code)
