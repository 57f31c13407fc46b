"""The DFU 1.1 state machine with ST's DfuSe commands, as an STM32F4 ROM bootloader runs it.

Behaviour follows DFU 1.1 and ST's AN3156 / AN2662 device-side flowcharts: a DNLOAD only stores its
block (dfuDNLOAD-SYNC); the GETSTATUS that follows starts the work and answers dfuDNBUSY with the
work's time as ``bwPollTimeout``; the next GETSTATUS answers dfuDNLOAD-IDLE, or dfuERROR with the
status the work ended with (errTARGET for an address the alt setting does not serve, errVENDOR
for anything but read unprotect under readout protection). A request the state does not allow is
stalled and leaves dfuERROR / errSTALLEDPKT. Writing the option bytes and read unprotect end in a
system reset; a zero-length DNLOAD leaves DFU mode and starts the application.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NoReturn

from agent.sim.stm32_dfu import timing
from agent.sim.stm32_dfu.board import OPTION_BYTES_ALT, RDP_LEVEL2, DfuBoard
from agent.sim.stm32_dfu.faults import DfuFaults
from agent.sim.stm32_dfu.protocol import Request, State, Status

SET_ADDRESS, ERASE, READ_UNPROTECT, GET_COMMANDS = 0x21, 0x41, 0x92, 0x00
_DOWNLOAD_STATES = (State.DFU_IDLE, State.DNLOAD_IDLE)
_UPLOAD_STATES = (State.DFU_IDLE, State.UPLOAD_IDLE)
_ABORTABLE = (State.DFU_IDLE, State.DNLOAD_SYNC, State.DNLOAD_IDLE,
              State.MANIFEST_SYNC, State.UPLOAD_IDLE)


class Stall(Exception):
    """The request is answered with STALL."""


class DeviceGone(Exception):
    """The device left the bus in the middle of the request (the vanish fault)."""


@dataclass(frozen=True)
class Operation:
    """One piece of work the device did, for tests and the benchmark."""

    kind: str  # set-address, erase, mass-erase, write, read, option-bytes, read-unprotect
    address: int | None = None
    size: int = 0


@dataclass(frozen=True)
class _Outcome:
    status: Status
    seconds: float = 0.0
    then: str | None = None  # "reset" after the work


@dataclass
class DfuseEngine:
    """Serves the DFU class requests of one enumerated device instance."""

    board: DfuBoard
    faults: DfuFaults
    clock: timing.DfuTiming
    transfer_size: int = 2048
    history: list[Operation] = field(default_factory=list)
    state: State = State.DFU_IDLE
    status: Status = Status.OK
    poll_timeout_ms: int = 0
    alternate: int = 0
    pointer: int = 0x0800_0000
    event: str | None = None  # "reset" or "leave" once the current work is over
    _pending: tuple[int, bytes] | None = None
    _result: Status = Status.OK

    def request(self, request: int, value: int, data: bytes | None, length: int) -> bytes:
        """Serve one class request; returns the IN data (empty for OUT). Raises Stall."""
        if self.faults.take_stall(request):
            self._stall()
        if request == Request.DNLOAD:
            self._download(value, data or b"")
            return b""
        if request == Request.UPLOAD:
            return self._upload(value, length)
        if request == Request.GETSTATUS:
            return self._get_status()
        if request == Request.CLRSTATUS:
            self._clear_status()
        elif request == Request.GETSTATE:
            return bytes([self.state])
        elif request == Request.ABORT:
            self._abort()
        elif request == Request.DETACH:
            self.event = "detach"
        else:
            self._stall()
        return b""

    @property
    def busy(self) -> bool:
        """True while the answer just given asks the host to wait (dfuDNBUSY / dfuMANIFEST)."""
        return self.state in (State.DNBUSY, State.MANIFEST)

    # --- requests --------------------------------------------------------------------------------

    def _download(self, block: int, data: bytes) -> None:
        if self.state not in _DOWNLOAD_STATES or len(data) > self.transfer_size:
            self._stall()
        if data:
            self._pending, self.state = (block, data), State.DNLOAD_SYNC
        else:
            self.state = State.MANIFEST_SYNC  # DfuSe: leave DFU mode

    def _upload(self, block: int, length: int) -> bytes:
        if self.state not in _UPLOAD_STATES or length > self.transfer_size or block == 1:
            self._stall()
        if block == 0:
            self.state = State.UPLOAD_IDLE
            return bytes([GET_COMMANDS, SET_ADDRESS, ERASE, READ_UNPROTECT])[:length]
        if self.board.protected:
            self._stall(Status.ERR_VENDOR)
        address = self.pointer + (block - 2) * self.transfer_size
        data = self.board.read(address, length)
        if data is None:
            self._stall(Status.ERR_TARGET)
        self.history.append(Operation("read", address, length))
        self.state = State.UPLOAD_IDLE
        return data

    def _get_status(self) -> bytes:
        self.poll_timeout_ms = 0
        if self.state == State.DNLOAD_SYNC and self._pending is not None:
            block, data = self._pending
            self._pending = None
            outcome = self._execute(block, data)
            self._result, self.event = outcome.status, outcome.then
            self.state = State.DNBUSY
            self.poll_timeout_ms = self.clock.poll_timeout_ms(outcome.seconds)
        elif self.state in (State.DNLOAD_SYNC, State.DNBUSY):
            if self._result == Status.OK:
                self.state = State.DNLOAD_IDLE
            else:
                self.state, self.status = State.DFU_ERROR, self._result
        elif self.state == State.MANIFEST_SYNC:
            self.state, self.event = State.MANIFEST, "leave"
            self.poll_timeout_ms = self.clock.poll_timeout_ms(0.001)
        raw = bytes([self.status]) + self.poll_timeout_ms.to_bytes(3, "little")
        return raw + bytes([self.state, 0])

    def _clear_status(self) -> None:
        if self.state == State.DFU_ERROR:
            self.state, self.status = State.DFU_IDLE, Status.OK
        else:  # as ST's devices do: CLRSTATUS outside dfuERROR is itself an error
            self.state, self.status = State.DFU_ERROR, Status.ERR_UNKNOWN

    def _abort(self) -> None:
        if self.state not in _ABORTABLE:
            self._stall()
        self.state, self._pending = State.DFU_IDLE, None

    def _stall(self, status: Status = Status.ERR_STALLEDPKT) -> NoReturn:
        """Enter dfuERROR and stall the request."""
        self.state, self.status = State.DFU_ERROR, status
        raise Stall(status.name)

    # --- work ------------------------------------------------------------------------------------

    def _execute(self, block: int, data: bytes) -> _Outcome:
        if block == 0:
            return self._command(data)
        if block == 1:
            return _Outcome(Status.OK)  # reserved; ST's bootloader ignores it
        address = self.pointer + (block - 2) * self.transfer_size
        if self.alternate == OPTION_BYTES_ALT:
            if not self.board.write_option_bytes(address, data):
                return _Outcome(Status.ERR_TARGET)
            self.history.append(Operation("option-bytes", address, len(data)))
            return _Outcome(Status.OK, timing.OPTION_BYTES_S, then="reset")
        return self._write(address, data)

    def _write(self, address: int, data: bytes) -> _Outcome:
        seconds = timing.program_s(len(data))
        if self.board.protected:
            return _Outcome(Status.ERR_VENDOR)
        failure = self.faults.take_status_error("write")
        if failure is not None:
            return _Outcome(Status(failure), seconds)
        if not self.faults.take_lost_write() and not self.board.program(
            self.alternate, address, data
        ):
            return _Outcome(Status.ERR_TARGET)
        self.history.append(Operation("write", address, len(data)))
        if self.faults.take_vanish():
            raise DeviceGone(f"left the bus after the block at 0x{address:08X}")
        return _Outcome(Status.OK, seconds)

    def _command(self, data: bytes) -> _Outcome:
        command, argument = data[0], data[1:]
        address = int.from_bytes(argument, "little") if len(argument) == 4 else None
        if command == SET_ADDRESS and address is not None:
            failure = self.faults.take_status_error("set-address")
            if failure is not None:
                return _Outcome(Status(failure))
            self.pointer = address
            self.history.append(Operation("set-address", address))
            return _Outcome(Status.OK)
        if command == ERASE and address is not None:
            return self._erase(address)
        if command == ERASE and not argument:
            if self.board.protected:
                return _Outcome(Status.ERR_VENDOR)
            self.board.chip.mass_erase()
            self.history.append(Operation("mass-erase"))
            return _Outcome(Status.OK, timing.MASS_ERASE_S)
        if command == READ_UNPROTECT and not argument:
            if self.board.chip.rdp == RDP_LEVEL2:
                return _Outcome(Status.ERR_VENDOR)
            self.board.read_unprotect()
            self.history.append(Operation("read-unprotect"))
            return _Outcome(Status.OK, timing.MASS_ERASE_S, then="reset")
        if command == GET_COMMANDS and not argument:
            return _Outcome(Status.OK)
        return _Outcome(Status.ERR_STALLEDPKT)

    def _erase(self, address: int) -> _Outcome:
        if self.board.protected:
            return _Outcome(Status.ERR_VENDOR)
        sector = self.board.sector_at(address)
        if sector is None:
            return _Outcome(Status.ERR_TARGET)
        number, size = sector
        failure = self.faults.take_status_error("erase")
        if failure is not None:
            return _Outcome(Status(failure), timing.erase_s(size))
        self.board.chip.erase_sector(number)
        self.history.append(Operation("erase", address, size))
        return _Outcome(Status.OK, timing.erase_s(size))
