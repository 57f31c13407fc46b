"""An STM32 in its USB-DFU ROM bootloader (DFU 1.1 + DfuSe) as a :class:`Programmer`.

The split follows the pyOCD backend: :class:`~agent.hw.dfu_session.DfuSession` is the blocking
half that owns the pyusb device on this slot's single worker thread; this class is the small
async facade. Its constructor takes plain settings only (ids, pin numbers, policy), so it can be
built in a worker process; the worker thread, the pyusb objects and the GPIO lines come into being
when it first connects. ``usb_backend`` is pyusb's backend mechanism (``None``: libusb), the one
place a simulated bus can be put behind the unchanged client; ``pin_factory`` is gpiozero's
(``None``: the Pi's own).

``abort()`` sets the unit's abort event, which every transfer and every poll wait looks at, and
cancels the await in flight at once; an operation that was aborted fails even when its last
library call returned normally.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from agent.errors import ProgrammerAborted, WriteFailed
from agent.hw.boot_control import BootControl
from agent.hw.dfu import DfuPolicy
from agent.hw.dfu_device import DeviceSelector
from agent.hw.dfu_session import DfuSession
from agent.hw.programmer import Connection, ConnectOptions, Region, ValidFlag

_T = TypeVar("_T")
log = logging.getLogger(__name__)
ST_VID, ST_DFU_PID = 0x0483, 0xDF11  # every STM32 ROM bootloader enumerates as this


class Stm32DfuProgrammer:
    """One USB-DFU slot: the board's ROM bootloader, told apart by port path and/or serial."""

    def __init__(
        self,
        *,
        vid: int = ST_VID,
        pid: int = ST_DFU_PID,
        serial: str | None = None,
        usb_path: str | None = None,
        boot0_pin: int | None = None,
        nreset_pin: int | None = None,
        policy: DfuPolicy | None = None,
        reserved: Sequence[Region] = (),
        usb_backend: Any = None,
        pin_factory: Any = None,
    ) -> None:
        """``reserved``: flash that must outlive every cycle; erasing it is refused."""
        self._selector = DeviceSelector(vid=vid, pid=pid, serial=serial, path=usb_path)
        self._pins = (boot0_pin, nreset_pin)
        self._policy = policy or DfuPolicy()
        self._reserved = tuple(reserved)
        self._usb_backend = usb_backend
        self._pin_factory = pin_factory
        self._session: DfuSession | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._boot: BootControl | None = None
        self._abort: threading.Event | None = None  # made at connect: a lock does not pickle
        self._inflight: set[asyncio.Future[Any]] = set()

    async def prepare(self, options: ConnectOptions | None) -> None:
        """Import pyusb now (finding the device waits for a board)."""
        import usb.core  # noqa: F401

    async def connect(self, options: ConnectOptions) -> Connection:
        """Enter the bootloader (BOOT0 high, reset), find the device, identify the part."""
        await self._release(start_application=False)
        self._abort = threading.Event()
        session = self._worker_session()
        session.abort = self._abort
        boot = self._boot_control()
        if boot is not None:
            await boot.enter_bootloader()
        return await self._run("connect", lambda: session.open(options))

    async def read_unique_id(self) -> str:
        """The 96-bit UID through the DfuSe address pointer, as lowercase hex."""
        return await self._run("read unique id", self._worker_session().unique_id)

    async def erase(self, region: Region) -> None:
        """Erase the sectors ``region`` touches; refuse if one holds another written region."""
        session = self._worker_session()
        await self._run("erase", lambda: session.erase(region))

    async def write(self, region: Region, data: bytes) -> None:
        """Erase what still needs it, then DNLOAD every block that is not all 0xFF."""
        if len(data) != region.size:
            raise WriteFailed(f"{len(data)} bytes for a {region.size}-byte region",
                              region=region.name)
        session = self._worker_session()
        await self._run("write", lambda: session.write(region, data))

    async def read(self, region: Region) -> bytes:
        """Read ``region`` back through UPLOAD."""
        session = self._worker_session()
        return await self._run("read", lambda: session.read(region))

    async def set_valid_flag(self, flag: ValidFlag) -> None:
        """Program the valid word into erased flash and read it back."""
        session = self._worker_session()
        await self._run("set valid flag", lambda: session.set_valid_flag(flag))

    async def lock(self) -> None:
        """Readout protection level 1 through the option bytes, confirmed after the reset."""
        await self._run("lock", self._worker_session().lock)

    async def disconnect(self) -> None:
        """Leave DFU mode (the new firmware starts), release the device, BOOT0 low."""
        aborted = self._abort is not None and self._abort.is_set()
        await self._release(start_application=not aborted)

    async def abort(self) -> None:
        """Fail the operation in flight now; the worker stops at its next transfer."""
        self._abort = self._abort or threading.Event()
        self._abort.set()
        for future in list(self._inflight):
            future.cancel()

    def shutdown(self) -> None:
        """Stop the worker thread and free the GPIO lines (at station exit)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._boot is not None:
            self._boot.close()

    async def _release(self, *, start_application: bool) -> None:
        if self._session is not None:
            session = self._session
            await self._call(lambda: session.finish(start_application=start_application))
        if self._boot is not None:
            await self._boot.leave_bootloader()

    async def _run(self, name: str, call: Callable[[], _T]) -> _T:
        """Run ``call`` on the worker; after an abort it fails, whatever the call returned."""
        abort = self._abort = self._abort or threading.Event()
        if abort.is_set():
            raise ProgrammerAborted(f"{name}: the programmer was aborted; connect again")
        try:
            result = await self._call(call)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if abort.is_set() and (current is None or current.cancelling() == 0):
                raise ProgrammerAborted(f"{name}: aborted") from None
            raise
        except Exception as error:
            if abort.is_set() and not isinstance(error, ProgrammerAborted):
                raise ProgrammerAborted(f"{name}: aborted ({error})") from error
            raise
        if abort.is_set():
            raise ProgrammerAborted(f"{name}: aborted")
        return result

    async def _call(self, call: Callable[[], _T]) -> _T:
        future = asyncio.get_running_loop().run_in_executor(self._worker(), call)
        self._inflight.add(future)
        try:
            return await future
        finally:
            self._inflight.discard(future)

    def _worker(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            name = f"dfu-{self._selector.path or self._selector.serial or 'slot'}"
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=name
            )
        return self._executor

    def _worker_session(self) -> DfuSession:
        if self._session is None:
            self._session = DfuSession(selector=self._selector, backend=self._usb_backend,
                                       policy=self._policy, reserved=self._reserved)
        return self._session

    def _boot_control(self) -> BootControl | None:
        boot0, nreset = self._pins
        if self._boot is None and (boot0 is not None or nreset is not None):
            self._boot = BootControl(boot0_pin=boot0, nreset_pin=nreset,
                                     pin_factory=self._pin_factory)
        return self._boot
