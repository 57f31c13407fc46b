"""One board in one fixture position, as the USB bus sees it: powered or not, in its bootloader
or running its application, and each time it enumerates a new instance with a new address.

The board follows DUT power (a callable, the fixture's relay) and its BOOT0/NRESET lines (the
fixture's gpiozero MockFactory pins, when the slot wires them): after a power-on or a reset pulse
it enters the DFU bootloader if BOOT0 is high, else it runs its application and is not on the bus.
A slot without a BOOT0 line has the board strapped for the bootloader. The lines are read when the
host next looks at the bus, which is when it could tell the difference. Every reset (option bytes,
read unprotect, leave, a pulse) ends the instance; a handle to it then fails as libusb's do.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.sim.stm32_dfu import descriptors
from agent.sim.stm32_dfu.board import ALT_NAMES, DfuBoard
from agent.sim.stm32_dfu.engine import DeviceGone, DfuseEngine, Stall
from agent.sim.stm32_dfu.faults import DfuFaults
from agent.sim.stm32_dfu.timing import DfuTiming

_GET_STATUS, _SET_CONFIGURATION, _GET_DESCRIPTOR, _GET_CONFIGURATION = 0, 9, 6, 8
_SET_INTERFACE = 11
_addresses = itertools.count(2)  # bus addresses, as a host hands them out (1 is the root hub)


class BootLines:
    """The board's BOOT0 and NRESET as the fixture drives them (MockFactory output pins)."""

    def __init__(self, factory: Any, *, boot0: int | None, nreset: int | None) -> None:
        self._factory = factory
        self._boot0, self._nreset = boot0, nreset
        self._seen = 0

    def boot0_high(self) -> bool:
        """BOOT0 level; an undriven line is pulled down, no line at all is strapped high."""
        if self._boot0 is None:
            return True
        pin = self._factory.pin(self._boot0)
        return pin.function == "output" and bool(pin.state)

    def held_in_reset(self) -> bool:
        """NRESET driven low right now."""
        pin = self._nreset_pin()
        return pin is not None and pin.function == "output" and not pin.state

    def pulses(self) -> int:
        """Reset pulses (NRESET driven low, then released) since the last look."""
        pin = self._nreset_pin()
        if pin is None:
            return 0
        states = pin.states
        if len(states) < self._seen:
            self._seen = 0  # the history was cleared
        count = sum(
            1 for index in range(max(self._seen, 2), len(states))
            if states[index].state and not states[index - 1].state
        )
        self._seen = len(states)
        return count

    def _nreset_pin(self) -> Any:
        return None if self._nreset is None else self._factory.pin(self._nreset)


@dataclass(eq=False)
class Attachment:
    """One enumerated instance of the device: what the backend hands pyusb as the device id."""

    owner: SimDfuDevice
    address: int
    engine: DfuseEngine
    visible_at: float


class SimDfuDevice:
    """A simulated STM32F4 in one fixture position: bus port, board, lines, power, clock."""

    def __init__(
        self,
        *,
        port_numbers: tuple[int, ...],
        board: DfuBoard,
        lines: BootLines | None = None,
        powered: Callable[[], bool] | None = None,
        timing: DfuTiming | None = None,
    ) -> None:
        self.port_numbers = port_numbers
        self.board = board
        self.lines = lines
        self.powered = powered
        self.timing = timing or DfuTiming()
        self.faults = DfuFaults()
        self.history: list[Any] = []
        self._attachment: Attachment | None = None
        self._on = False
        self._scheduled: tuple[float, str] | None = None
        self.lock = threading.RLock()  # the worker's transfers against the operator's hands

    def place_new_board(self, board: DfuBoard) -> None:
        """Swap the board; a powered position runs it from a power-on reset at once."""
        with self.lock:
            self.board, self._on, self._attachment = board, False, None
            self.history.clear()
            self._advance()

    def reset(self) -> None:
        """A reset of the part as a button would do (BOOT0 decides where it starts)."""
        with self.lock:
            self._restart()

    def attachment(self) -> Attachment | None:
        """The instance on the bus right now, if any."""
        with self.lock:
            self._advance()
            current = self._attachment
        if current is None or time.monotonic() < current.visible_at:
            return None
        return current

    def control(self, attachment: Attachment, setup: tuple[int, int, int, int],
                data: bytes | None, length: int) -> bytes:
        """One control transfer to ``attachment``; raises Stall, or DeviceGone when it is gone."""
        with self.lock:
            return self._control(attachment, setup, data, length)

    def _control(self, attachment: Attachment, setup: tuple[int, int, int, int],
                 data: bytes | None, length: int) -> bytes:
        self._require(attachment)
        request_type, request, value, index = setup
        busy_before = attachment.engine.busy
        try:
            if request_type & 0x60 == 0x20:
                answer = self._class_request(attachment, request, value, index, data, length)
            else:
                answer = self._standard(attachment, request_type, request, value, data)
        except DeviceGone:
            self._attachment = None
            raise
        if attachment.engine.event == "reset" and self.faults.take_silent_reset():
            self._restart()  # reset before the answer is out: the host sees its status stage
            raise Stall("reset before answering")  # fail (libusb: a pipe error here)
        busy = attachment.engine.busy and not busy_before
        self.timing.transfer(len(data or b"") + len(answer), settle=busy)
        if busy:
            ready = self.timing.busy_for(attachment.engine.poll_timeout_ms)
        else:
            ready = time.monotonic()
        self._schedule(attachment, ready)
        return answer[:length]

    def select_alternate(self, attachment: Attachment, alternate: int) -> None:
        """SET_INTERFACE."""
        self.control(attachment, (0x01, _SET_INTERFACE, alternate, 0), None, 0)

    # --- requests --------------------------------------------------------------------------------

    def _class_request(self, attachment: Attachment, request: int, value: int, index: int,
                       data: bytes | None, length: int) -> bytes:
        if index != 0:
            raise Stall(f"no interface {index}")
        return attachment.engine.request(request, value, data, length)

    def _standard(self, attachment: Attachment, request_type: int, request: int, value: int,
                  data: bytes | None) -> bytes:
        if request == _GET_DESCRIPTOR and request_type == 0x80:
            return self._descriptor(value >> 8, value & 0xFF)
        if request == _SET_INTERFACE and request_type == 0x01:
            if not 0 <= value < len(ALT_NAMES):
                raise Stall(f"no alt setting {value}")
            attachment.engine.alternate = value
            return b""
        if request == _GET_STATUS and request_type == 0x80:
            return b"\x00\x00"
        if request == _GET_CONFIGURATION and request_type == 0x80:
            return b"\x01"
        if request == _SET_CONFIGURATION and request_type == 0x00 and value == 1:
            return b""
        raise Stall(f"standard request 0x{request_type:02X}/{request} is not served")

    def _descriptor(self, kind: int, index: int) -> bytes:
        if kind == descriptors.DEVICE:
            return descriptors.device_descriptor()
        if kind == descriptors.CONFIGURATION and index == 0:
            return descriptors.configuration_descriptor()
        if kind == descriptors.STRING:
            found = descriptors.string_descriptor(index, self.board.serial)
            if found is not None:
                return found
        raise Stall(f"no descriptor type {kind} index {index}")

    # --- power, lines, resets --------------------------------------------------------------------

    def _require(self, attachment: Attachment) -> None:
        self._advance()
        if attachment is not self._attachment:
            raise DeviceGone("the device is no longer on the bus")

    def _advance(self) -> None:
        """Catch up with power, the lines and scheduled resets."""
        if self.powered is not None and not self.powered():
            self._on, self._attachment, self._scheduled = False, None, None
            return
        pulses = self.lines.pulses() if self.lines is not None else 0
        if not self._on or pulses:
            self._restart()
        if self.lines is not None and self.lines.held_in_reset():
            self._attachment = None
            return
        if self._scheduled is not None and time.monotonic() >= self._scheduled[0]:
            _, what = self._scheduled
            self._scheduled = None
            if what == "leave":  # the ROM jumps to the application: off the bus
                self._attachment = None
            else:
                self._restart()

    def _schedule(self, attachment: Attachment, ready_at: float) -> None:
        event, attachment.engine.event = attachment.engine.event, None
        if event in ("reset", "leave", "detach"):
            self._scheduled = (ready_at, "leave" if event == "leave" else "reset")

    def _restart(self) -> None:
        """A reset: the board loads its option bytes and starts where BOOT0 says."""
        self._on, self._scheduled = True, None
        self.board.reset()
        if self.lines is not None and not self.lines.boot0_high():
            self._attachment = None
            return
        engine = DfuseEngine(board=self.board, faults=self.faults, clock=self.timing,
                             transfer_size=descriptors.TRANSFER_SIZE, history=self.history)
        self._attachment = Attachment(owner=self, address=next(_addresses), engine=engine,
                                      visible_at=time.monotonic() + self.timing.reenumerate_s())
