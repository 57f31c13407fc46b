"""The blocking half of the USB-DFU programmer: one DfuSe device, used only from the slot's worker.

It finds the slot's device, identifies the part from its flash layout, and keeps the same sector
ledger as the UART backend: STM32F4 sectors are large and shared sectors are never erased behind
another region's back; blocks that are all 0xFF are not sent. Readout protection is found by the
part refusing UPLOAD (errVENDOR); removing it (read unprotect) and setting it (option bytes) both
reset the part, after which the session waits for it to enumerate again and reattaches.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, TypeVar

import usb.core
import usb.util

from agent.errors import (
    EraseFailed,
    FailureCode,
    ProgrammerAborted,
    ProgrammerError,
    ProtocolError,
    TargetLocked,
    WriteFailed,
)
from agent.hw.dfu import DfuInterface, DfuPolicy, usb_failure
from agent.hw.dfu_device import (
    DFUSE_VERSION,
    DeviceSelector,
    DfuDescription,
    describe,
    wait_for_device,
)
from agent.hw.dfu_parts import FLASH_ALT, DfuPart, identify
from agent.hw.dfu_status import DfuStatus, DfuStatusError, placed
from agent.hw.dfuse import DfuseCommands, MemoryLayout, parse_layout
from agent.hw.programmer import Connection, ConnectOptions, Region, ValidFlag
from agent.hw.stm32_flash import FlashLedger

_T = TypeVar("_T")
log = logging.getLogger(__name__)
_ERASED = b"\xff" * 0x10000


class DfuSession:
    """One slot's DFU device; ``abort`` is the current unit's abort event."""

    def __init__(
        self, *, selector: DeviceSelector, backend: Any, policy: DfuPolicy,
        reserved: Sequence[Region] = (),
    ) -> None:
        self.selector = selector
        self.backend = backend
        self.policy = policy
        self.reserved = tuple(reserved)
        self.abort = threading.Event()
        self._device: Any = None
        self._dfu: DfuInterface | None = None
        self._dfuse: DfuseCommands | None = None
        self._description: DfuDescription | None = None
        self._part: DfuPart | None = None
        self._uid: bytes | None = None
        self._ledger = FlashLedger()

    # --- connection ------------------------------------------------------------------------------

    def open(self, options: ConnectOptions) -> Connection:
        """Find and attach the device, identify the part, deal with readout protection."""
        self.close()
        self._attach(wait_for_device(self.selector, self.backend, abort=self.abort,
                                     timeout_s=self.policy.enumerate_timeout_s))
        part = identify(self._flash_layout(), options.for_bootloader)
        self._part, self._ledger = part, FlashLedger()
        uid_bytes = part.chip.uid_size if part.uid_over_dfu else None  # else: the serial string
        if self._read_uid(part):
            return Connection(uid_bytes=uid_bytes)
        if not options.recover_locked:
            raise TargetLocked("readout protection is active and recovery was not allowed")
        log.warning("%s: removing readout protection (mass erase), as the job allows",
                    self.selector)
        self._reattach_after_reset(self._commands().read_unprotect(), "read unprotect")
        if not self._read_uid(part):
            raise TargetLocked("still locked after read unprotect")
        self._ledger.mark_erased(list(range(len(part.chip.sector_sizes))))
        return Connection(recovered_locked_part=True, uid_bytes=uid_bytes)

    def finish(self, *, start_application: bool) -> None:
        """Leave DFU mode so the new firmware starts (best effort), then let the device go."""
        try:
            if start_application and self._dfuse is not None and self._part is not None:
                self._dfuse.leave(self._part.chip.flash_base)
        except ProgrammerError as error:  # a device that already left is as good as one leaving
            log.info("%s: leaving DFU mode: %s", self.selector, error)
        finally:
            self.close()

    def close(self) -> None:
        """Release the interface and the handle; safe when not attached."""
        device, self._device, self._dfu, self._dfuse = self._device, None, None, None
        if device is not None:
            try:
                usb.util.dispose_resources(device)
            except usb.core.USBError:
                log.debug("%s: releasing a device that is gone", self.selector, exc_info=True)

    # --- the programmer's operations -------------------------------------------------------------

    def unique_id(self) -> str:
        """The UID read through the address pointer, else the device's serial string."""
        self._require_part()
        if self._uid is not None:
            return self._uid.hex()
        assert self._description is not None
        return self._description.serial.lower()

    def erase(self, region: Region) -> None:
        """Erase the sectors ``region`` touches, unless they hold other regions or reserved."""
        part = self._require_part()
        sectors = self._sectors(region)
        overlapping = self._ledger.overlapping(region)
        if overlapping:
            raise EraseFailed(f"overlaps {overlapping} written in this cycle", region=region.name)
        todo = self._ledger.needing_erase(sectors, region.name)
        self._ledger.refuse_shared(part.chip, region, todo, self.reserved)
        dfuse = self._commands()
        for sector in todo:
            start, _ = part.chip.sector_span(sector)
            try:
                dfuse.erase_page(start)
            except ProgrammerError as error:
                raise placed(error, region=region.name, address=start) from error
            self._ledger.mark_erased([sector])

    def write(self, region: Region, data: bytes) -> None:
        """Erase what still needs it, then send every block that is not all 0xFF."""
        self.erase(region)
        dfuse = self._commands()
        try:
            dfuse.write(region.address, data, skip=_ERASED)
        except ProgrammerError as error:
            raise placed(error, region=region.name, address=dfuse.last_address) from error
        self._ledger.mark_written(self._sectors(region), region.name, (region.address, region.end))

    def read(self, region: Region) -> bytes:
        """Read ``region`` back in transfer-size UPLOADs."""
        self._require_part()
        dfuse = self._commands()
        try:
            return dfuse.read(region.address, region.size)
        except ProgrammerError as error:
            raise placed(error, region=region.name, address=dfuse.last_address) from error

    def set_valid_flag(self, flag: ValidFlag) -> None:
        """Program the valid word into erased flash and read it back."""
        part, dfuse = self._require_part(), self._commands()
        code = FailureCode.VALID_FLAG_FAILED
        if flag.kind != "flash-word" or flag.address % 4:
            raise WriteFailed(f"needs a word-aligned flash-word flag, got {flag}", code=code)
        word = flag.value.to_bytes(4, "little")
        before = dfuse.read(flag.address, 4)
        if before != b"\xff" * 4:
            raise WriteFailed(f"valid word reads {before.hex()}, not erased: erase its region "
                              "first", address=flag.address, code=code)
        dfuse.write(flag.address, word)
        after = dfuse.read(flag.address, 4)
        if after != word:
            raise WriteFailed(f"valid word reads {after.hex()} after writing {word.hex()}",
                              address=flag.address, code=code)
        name = f"valid-flag@0x{flag.address:08X}"
        span = (flag.address, flag.address + 4)
        self._ledger.mark_written(part.chip.sectors(flag.address, 4), name, span)

    def lock(self) -> None:
        """Readout protection level 1 through the option bytes; confirm UPLOAD is refused."""
        part, description = self._require_part(), self._describe()
        layout = parse_layout(description.alternate(part.option_bytes_alt).name,
                              where=f"alt setting {part.option_bytes_alt!r}")
        address, size = layout.segments[0].address, sum(s.end - s.address
                                                        for s in layout.segments)
        self._select(description.alternate(part.option_bytes_alt).alternate)
        dfuse = self._commands()
        options = bytearray(dfuse.read(address, size))
        options[part.rdp_offset] = part.rdp_level1
        try:
            poll_ms = dfuse.write_then_reset(address, bytes(options), "write the option bytes")
        except DfuStatusError as error:
            raise ProgrammerError(f"readout protection not set: {error}", address=address,
                                  code=FailureCode.LOCK_FAILED) from error
        self._reattach_after_reset(poll_ms, "option bytes")
        if self._read_uid(part):
            raise ProgrammerError("readout protection did not take: the part still serves "
                                  "UPLOAD after its reset", code=FailureCode.LOCK_FAILED)

    # --- plumbing --------------------------------------------------------------------------------

    def _attach(self, device: Any) -> None:
        """Claim the DFU interface, check it is DfuSe, select the flash, bring it to dfuIDLE."""
        self._device = device
        description = describe(device)
        functional = description.functional
        if functional.version != DFUSE_VERSION:
            raise ProtocolError(
                f"the device speaks DFU {functional.version:#06x}, not DfuSe (0x011a): plain DFU "
                "has no addresses, and this programmer writes regions at addresses")
        if not functional.can_upload or not functional.can_download:
            raise ProtocolError(f"the device cannot both download and upload (bmAttributes "
                                f"0x{functional.attributes:02x}): read-back needs both")
        self._description = description
        interface = description.alternates[0].interface
        try:
            usb.util.claim_interface(device, interface)
        except usb.core.USBError as error:
            raise usb_failure(error, "claiming the DFU interface (is dfu-util running?)") \
                from error
        self._dfu = DfuInterface(device, interface=interface, abort=self.abort,
                                 policy=self.policy)
        self._dfuse = DfuseCommands(self._dfu, transfer_size=functional.transfer_size)
        self._select(description.alternate(FLASH_ALT).alternate)

    def _select(self, alternate: int) -> None:
        """SET_INTERFACE to ``alternate`` and leave the device idle in it."""
        dfu = self._interface()
        try:
            self._device.set_interface_altsetting(dfu.interface, alternate)
        except usb.core.USBError as error:
            raise usb_failure(error, f"selecting alt setting {alternate}") from error
        dfu.recover(f"alt setting {alternate}")

    def _read_uid(self, part: DfuPart) -> bool:
        """Read the UID (or probe flash); False when the part refuses (readout protection)."""
        chip, dfuse = part.chip, self._commands()
        try:
            if part.uid_over_dfu:
                self._uid = dfuse.read(chip.uid_address, chip.uid_size)
            else:
                dfuse.read(chip.flash_base, 4)
        except DfuStatusError as error:
            if error.status != DfuStatus.ERR_VENDOR:
                raise
            self._interface().recover("clear the readout-protection refusal")
            return False
        return True

    def _reattach_after_reset(self, poll_ms: int, what: str) -> None:
        """The part resets after ``what``: wait for its new instance on the bus, attach to it."""
        old = (self._device.bus, self._device.address)
        self.close()
        if poll_ms and self.abort.wait(poll_ms / 1000):
            raise ProgrammerAborted(f"{what}: aborted")
        timeout = self.policy.busy_timeout_s + self.policy.enumerate_timeout_s
        self._attach(wait_for_device(self.selector, self.backend, abort=self.abort,
                                     timeout_s=timeout, unlike=old))

    def _flash_layout(self) -> MemoryLayout:
        return parse_layout(self._describe().alternate(FLASH_ALT).name,
                            where=f"alt setting {FLASH_ALT!r}")

    def _sectors(self, region: Region) -> list[int]:
        try:
            return self._require_part().chip.sectors(region.address, region.size)
        except ValueError as error:
            raise ProtocolError(str(error), region=region.name, address=region.address) from None

    def _require_part(self) -> DfuPart:
        self._commands()
        return _attached(self._part)

    def _describe(self) -> DfuDescription:
        return _attached(self._description)

    def _interface(self) -> DfuInterface:
        return _attached(self._dfu)

    def _commands(self) -> DfuseCommands:
        return _attached(self._dfuse)


def _attached(value: _T | None) -> _T:
    """``value``, which exists only while a device is attached."""
    if value is None:
        raise ProtocolError("not connected to the DFU bootloader")
    return value
