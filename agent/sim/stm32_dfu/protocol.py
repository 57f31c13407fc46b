"""DFU 1.1 numbers as the simulated device knows them.

Kept apart from the client's own table (``agent.hw.dfu_status``) on purpose: a wrong number in one
shows up against the other, and against the independent host the tests run.
"""

from __future__ import annotations

from enum import IntEnum


class Request(IntEnum):
    """DFU class requests (DFU 1.1 table 3.2)."""

    DETACH = 0
    DNLOAD = 1
    UPLOAD = 2
    GETSTATUS = 3
    CLRSTATUS = 4
    GETSTATE = 5
    ABORT = 6


class State(IntEnum):
    """bState (DFU 1.1 section 6.1.2)."""

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


class Status(IntEnum):
    """bStatus (DFU 1.1 section 6.1.2)."""

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
