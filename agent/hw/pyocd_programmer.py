"""SWD programming through pyOCD: the :class:`~agent.hw.programmer.Programmer` for Arm targets.

Threading: every pyOCD call runs on this programmer's own single worker thread, never on the event
loop. ``abort()`` marks the operations in flight as aborted and closes the probe from a helper
thread; the worker's next transfer then fails and the operation raises ``ProgrammerAborted``. The
station cuts DUT power as well, which makes a real probe's transfers fail the same way.

Locked parts and pyOCD's unlock behaviour, decided on purpose:

* pyOCD's ``auto_unlock`` option (on by default) silently mass-erases a part whose APPROTECT is set.
  This backend always runs with ``auto_unlock`` off. A locked part fails ``connect`` with
  ``TargetLocked`` and is left untouched, unless the job sets ``recover_locked``: then this backend
  mass-erases through the nRF CTRL-AP (ERASEALL) itself, reconnects, and reports
  ``Connection(recovered_locked_part=True)`` for the unit record.
* With ``auto_unlock`` on, pyOCD also writes UICR.APPROTECT = 0x5A ("HwDisabled") on *every*
  connect to nRF52 silicon with hardened APPROTECT (nRF52840 build code F0 and later). Because
  ``auto_unlock`` is off here, that write never happens behind the station's back: the only write
  to UICR.APPROTECT this backend makes is ``lock()`` (0x00, Enabled), at the end of a unit and only
  when the job asks. A product on newer silicon that must stay debuggable carries 0x5A in its
  firmware set's UICR image (and firmware that opens the port), like every other UICR setting.

Erasing a region in UICR (e.g. a valid flag in a customer register) can only erase all of UICR,
which would also reset APPROTECT, PSELRESET, NFCPINS and REGOUT0. ``erase`` therefore saves UICR,
erases it, and writes back every word outside the region, APPROTECT included (a part connected to is
unlocked, so APPROTECT is erased or 0x5A and is preserved as it was).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from agent.errors import (
    EraseFailed,
    FailureCode,
    ProbeLost,
    ProbeNotFound,
    ProgrammerAborted,
    ProgrammerError,
    TargetLocked,
    WriteFailed,
)
from agent.hw.programmer import Connection, ConnectOptions, Region, ValidFlag

LOG = logging.getLogger(__name__)
T = TypeVar("T")

NVMC_READY, NVMC_CONFIG = 0x4001E400, 0x4001E504
NVMC_READ_ONLY, NVMC_WRITE_ENABLE, NVMC_ERASE_ENABLE = 0, 1, 2
NVMC_ERASEUICR = 0x4001E514
FICR_DEVICEID, FICR_INFO_PART = 0x10000060, 0x10000100
UICR_BASE, UICR_SPAN = 0x10001000, 0x400  # the UICR words pyOCD maps as a flash region
UICR_CUSTOMER = range(0x10001080, 0x10001100)
UICR_APPROTECT = 0x10001208
APPROTECT_ENABLED = 0x00000000
CTRL_AP_RESET = 0x000  # nRF CTRL-AP: write 1 then 0 for a system reset
RESET_POST_DELAY_S = 0.005
# Imported by prepare(), so that no first unit pays for (or races on) a first import.
SESSION_MODULES = ("pyocd.core.session", "pyocd.core.helpers", "pyocd.flash.loader",
                   "pyocd.flash.eraser", "pyocd.target")
ERASED = 0xFFFFFFFF


_IMPORTS = threading.Lock()


def _import_pyocd() -> None:
    """pyOCD's modules, imported by one thread at a time.

    Several slots' threads importing pyOCD for the first time at once raced on its module
    locks (``_DeadlockError``, "partially initialized module") and lost the first panel's units.
    Worker processes do not share imports; this keeps the in-process mode safe as well.
    """
    with _IMPORTS:
        for module in SESSION_MODULES:
            importlib.import_module(module)


def _is_nrf52(target: str) -> bool:
    return target.lower().startswith("nrf52")


class _ProgrammingOnly:
    """pyOCD session delegate: drop what a programming session never uses.

    pyOCD parses the part's SVD file (peripheral descriptions, about 0.2 s of CPU for the nRF52840)
    on a thread of every session it opens; programming never reads it, and on a panel every slot
    paid it once per unit. pyOCD has no option for it; the init sequence is the documented hook.
    """

    def will_init_target(self, target: object, init_sequence: Any) -> None:
        if init_sequence.has_task("load_svd"):
            init_sequence.remove_task("load_svd")


_PROGRAMMING_ONLY = _ProgrammingOnly()


class _Link:
    """The blocking half: one pyOCD session, used only from the worker thread."""

    def __init__(self, probe_id: str, frequency_hz: int) -> None:
        self.probe_id = probe_id
        self.frequency_hz = frequency_hz
        self.session: Any = None
        self.target_name = ""

    # --- connection ----------------------------------------------------------------------------

    def prepare(self, target: str | None) -> None:
        """Import what a session uses, discover probes, look the target type up (no session)."""
        _import_pyocd()
        from pyocd.core.helpers import ConnectHelper
        from pyocd.target import TARGET

        ConnectHelper.get_all_connected_probes(blocking=False, unique_id=self.probe_id,
                                               print_wait_message=False)
        if target is not None and target.lower() not in TARGET:
            raise ProgrammerError(f"pyOCD has no target type {target!r}",
                                  code=FailureCode.TARGET_MISMATCH)

    def find_probe(self) -> Any:
        """The probe with exactly this id, without waiting for one to appear."""
        from pyocd.core.helpers import ConnectHelper

        wanted = self.probe_id.split(":", 1)[-1].lower()
        probes = ConnectHelper.get_all_connected_probes(
            blocking=False, unique_id=self.probe_id, print_wait_message=False
        )
        exact = [p for p in probes if p.unique_id.lower() == wanted]
        if not exact:
            raise ProbeNotFound(f"no debug probe {self.probe_id!r}")
        return exact[0]

    def open(self, options: ConnectOptions) -> Connection:
        """Open a session; a locked part fails unless recovery was asked for."""
        _import_pyocd()
        from pyocd.target import TARGET

        name = options.for_swd
        if name.lower() not in TARGET:
            raise ProgrammerError(
                f"pyOCD has no target type {name!r}", code=FailureCode.TARGET_MISMATCH
            )
        self.target_name = name.lower()
        recovered = False
        if not self._try_open():
            if not options.recover_locked:
                self.close()
                raise TargetLocked(f"{name} on {self.probe_id} has APPROTECT enabled")
            LOG.warning("%s: mass-erasing locked part (recover_locked)", self.probe_id)
            if not self.session.target.mass_erase():
                raise EraseFailed("CTRL-AP ERASEALL did not finish")
            self.close()
            if not self._try_open():
                raise TargetLocked("part still locked after CTRL-AP ERASEALL")
            recovered = True
        self._check_part()
        # A known start for the flash algorithm: a part fresh from a mass erase, or blank, runs
        # from an empty vector table into lockup; not every core leaves lockup on a halt request.
        self.session.target.reset_and_halt()
        return Connection(recovered_locked_part=recovered, uid_bytes=8)

    def _try_open(self) -> bool:
        """Open the session; False when the part is locked (session left open for recovery)."""
        from pyocd.core.session import Session

        self.session = Session(
            self.find_probe(),
            auto_open=False,
            options={
                "target_override": self.target_name,
                "frequency": self.frequency_hz,
                "auto_unlock": False,  # see the module docstring
                "resume_on_disconnect": False,
                "smart_flash": True,
                "keep_unwritten": True,
                "hide_programming_progress": True,
                "no_config": True,
                # pyOCD sleeps this long after every reset, then polls DHCSR until the core
                # answers anyway; 100 ms of margin per unit buys nothing on an nRF52.
                "reset.post_delay": RESET_POST_DELAY_S,
                "project_dir": os.getcwd(),  # pyOCD chdir()s to the project dir: keep it a no-op
            },
        )
        self.session.delegate = _PROGRAMMING_ONLY
        try:
            self.session.open()
        except Exception:
            if self._locked():
                return False
            self.close()
            raise
        return not self._locked()

    def _locked(self) -> bool:
        target = self.session.target if self.session is not None else None
        if target is None or getattr(target, "ctrl_ap", None) is None:
            return False
        return bool(target.is_locked())

    def _check_part(self) -> None:
        if not _is_nrf52(self.target_name):
            return
        part = self.read32(FICR_INFO_PART)
        if f"nrf{part:x}" not in self.target_name:
            raise ProgrammerError(
                f"target is {self.target_name} but the part says nRF{part:X}",
                code=FailureCode.TARGET_MISMATCH,
            )

    def close(self) -> None:
        """Close the session, ignoring a link that is already gone."""
        session, self.session = self.session, None
        if session is not None:
            try:
                session.close()
            except Exception:
                LOG.debug("%s: closing the session failed", self.probe_id, exc_info=True)

    def cut(self) -> None:
        """Close the probe under a running operation (called from a helper thread)."""
        session = self.session
        if session is not None and session.probe is not None:
            session.probe.close()

    # --- memory --------------------------------------------------------------------------------

    @property
    def target(self) -> Any:
        if self.session is None:
            raise ProbeLost("not connected")
        return self.session.target

    def read32(self, address: int) -> int:
        return int(self.target.read32(address))

    def read(self, address: int, size: int) -> bytes:
        return bytes(self.target.read_memory_block8(address, size))

    def unique_id(self) -> str:
        if not _is_nrf52(self.target_name):
            raise ProgrammerError(f"no unique id known for {self.target_name}")
        low, high = self.read32(FICR_DEVICEID), self.read32(FICR_DEVICEID + 4)
        return f"{high:08x}{low:08x}"

    def program(self, address: int, data: bytes) -> None:
        """Smart flash through pyOCD's loader: pages whose on-target CRC32 matches are skipped.

        ``trust_crc``: a page whose CRC matches is not read back here to confirm it, because the
        unit's verify stage reads and hashes every byte of the region anyway; reading it twice
        made a re-flash cost half again. A CRC collision (2^-32) leaves a page unwritten and shows
        as a read-back mismatch, never as a pass.
        """
        from pyocd.flash.loader import MemoryLoader

        loader = MemoryLoader(self.session, smart_flash=True, trust_crc=True, keep_unwritten=True)
        loader.add_data(address, data)
        loader.commit()

    def erase(self, address: int, size: int) -> None:
        """Erase the flash pages touched; UICR is erased with everything else restored."""
        from pyocd.flash.eraser import FlashEraser

        if UICR_BASE <= address < UICR_BASE + UICR_SPAN and _is_nrf52(self.target_name):
            self._erase_uicr_range(address, size)
            return
        FlashEraser(self.session, FlashEraser.Mode.SECTOR).erase([(address, address + size)])

    def _erase_uicr_range(self, address: int, size: int) -> None:
        # NVMC.ERASEUICR directly (as nrfjprog --eraseuicr does): no flash algorithm to load
        saved = self.read(UICR_BASE, UICR_SPAN)
        target = self.target
        target.write32(NVMC_CONFIG, NVMC_ERASE_ENABLE)
        self._wait_nvmc()
        target.write32(NVMC_ERASEUICR, 1)
        self._wait_nvmc()
        target.write32(NVMC_CONFIG, NVMC_WRITE_ENABLE)
        self._wait_nvmc()
        for offset in range(0, UICR_SPAN, 4):
            word = int.from_bytes(saved[offset : offset + 4], "little")
            here = UICR_BASE + offset
            if word != ERASED and not address <= here < address + size:
                target.write32(here, word)
                self._wait_nvmc()
        target.write32(NVMC_CONFIG, NVMC_READ_ONLY)
        self._wait_nvmc()

    def nvmc_write_word(self, address: int, value: int) -> None:
        """Program one flash/UICR word through the nRF NVMC (can only clear bits)."""
        target = self.target
        target.write32(NVMC_CONFIG, NVMC_WRITE_ENABLE)
        self._wait_nvmc()
        target.write32(address, value)
        self._wait_nvmc()
        target.write32(NVMC_CONFIG, NVMC_READ_ONLY)
        self._wait_nvmc()

    def _wait_nvmc(self) -> None:
        for _ in range(100_000):
            if self.read32(NVMC_READY) & 1:
                return
        raise ProgrammerError("NVMC stays busy", code=FailureCode.TIMEOUT)

    def lock_and_prove(self) -> None:
        """UICR.APPROTECT = Enabled, reset the part, and confirm it now refuses the debugger.

        APPROTECT takes effect at the part's next reset, so a word that reads back as written
        proves nothing. The reset goes through the nRF CTRL-AP (it works with the AHB-AP locked
        and needs no nRESET pin, which an nRF52840 only has once UICR.PSELRESET says so).
        """
        self.write_word_checked(UICR_APPROTECT, APPROTECT_ENABLED, FailureCode.LOCK_FAILED)
        target = self.target
        ctrl_ap = getattr(target, "ctrl_ap", None)
        if ctrl_ap is None:
            raise ProgrammerError(f"no way to prove a lock on {self.target_name}",
                                  code=FailureCode.LOCK_FAILED)
        ctrl_ap.write_reg(CTRL_AP_RESET, 1)
        ctrl_ap.write_reg(CTRL_AP_RESET, 0)
        self.close()
        locked = not self._try_open()
        self.close()
        if not locked:
            raise ProgrammerError("APPROTECT is written but the part still answers the debugger "
                                  "after a reset: not locked", address=UICR_APPROTECT,
                                  code=FailureCode.LOCK_FAILED)

    def write_word_checked(self, address: int, value: int, code: FailureCode) -> None:
        """Write a word that must read back as ``value`` (valid flag, APPROTECT)."""
        current = self.read32(address)
        if current & value != value:
            raise ProgrammerError("word is not erased; erase it first", address=address, code=code)
        if current != value:
            if _is_nrf52(self.target_name):
                self.nvmc_write_word(address, value)
            else:
                self.program(address, value.to_bytes(4, "little"))
        if self.read32(address) != value:
            raise ProgrammerError("word did not take the write", address=address, code=code)


class PyOcdProgrammer:
    """A pyOCD debug probe (``probe_id`` such as ``sim:0001``) attached to one slot."""

    def __init__(self, *, probe_id: str, frequency_hz: int = 4_000_000) -> None:
        self._link = _Link(probe_id, frequency_hz)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"pyocd-{probe_id}"
        )
        self._abort_generation = 0
        self._generation_lock = threading.Lock()

    async def _run(
        self, what: str, failure: type[ProgrammerError], call: Callable[[], T], **where: Any
    ) -> T:
        """Run ``call`` on the worker thread and translate what pyOCD raises."""
        generation = self._abort_generation
        work = functools.partial(self._guarded, generation, what, failure, call, where)
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def _guarded(
        self,
        generation: int,
        what: str,
        failure: type[ProgrammerError],
        call: Callable[[], T],
        where: dict[str, Any],
    ) -> T:
        from pyocd.core import exceptions

        if generation != self._abort_generation:
            raise ProgrammerAborted(f"{what}: aborted")
        try:
            result = call()
        except ProgrammerError:
            if generation != self._abort_generation:
                raise ProgrammerAborted(f"{what}: aborted") from None
            raise
        except Exception as error:
            if generation != self._abort_generation:
                self._link.close()
                raise ProgrammerAborted(f"{what}: aborted") from error
            if isinstance(error, exceptions.ProbeError | OSError):
                self._link.close()  # the next unit starts from a fresh session
                raise ProbeLost(f"{what}: {error}", **where) from error
            raise failure(f"{what}: {error}", **where) from error
        if generation != self._abort_generation:
            # Aborted while it ran, yet the probe let it finish (a close that does not cut the
            # transfer in flight): what it did happened after the abort and counts for nothing.
            self._link.close()
            raise ProgrammerAborted(f"{what}: aborted while it ran", **where)
        return result

    async def prepare(self, options: ConnectOptions | None) -> None:
        """pyOCD's imports, probe discovery and target lookup, on the slot's own thread."""
        call = functools.partial(self._link.prepare, options.for_swd if options else None)
        await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def connect(self, options: ConnectOptions) -> Connection:
        """Open the probe (ProbeNotFound at once if absent) and connect to the target."""
        await self._run("connect", ProbeLost, self._link.close)
        return await self._run("connect", ProbeLost, lambda: self._link.open(options))

    async def read_unique_id(self) -> str:
        """FICR DEVICEID as 16 lowercase hex digits (high word first)."""
        return await self._run("read unique id", ProbeLost, self._link.unique_id)

    async def erase(self, region: Region) -> None:
        """Erase the pages the region touches (UICR: see the module docstring)."""
        call = functools.partial(self._link.erase, region.address, region.size)
        await self._run("erase", EraseFailed, call, region=region.name)

    async def write(self, region: Region, data: bytes) -> None:
        """Program ``data`` into ``region``; unchanged pages are skipped (pyOCD smart flash)."""
        if len(data) != region.size:
            raise WriteFailed(
                f"{len(data)} bytes for a {region.size}-byte region", region=region.name
            )
        call = functools.partial(self._link.program, region.address, data)
        await self._run("write", WriteFailed, call, region=region.name)

    async def read(self, region: Region) -> bytes:
        """Read exactly ``region.size`` bytes back."""
        call = functools.partial(self._link.read, region.address, region.size)
        data = await self._run("read", ProbeLost, call, region=region.name)
        if len(data) != region.size:
            raise ProbeLost(f"short read: {len(data)} bytes", region=region.name)
        return data

    async def set_valid_flag(self, flag: ValidFlag) -> None:
        """Write the valid marker word (UICR customer register or a main-flash word)."""
        if flag.kind == "uicr" and flag.address not in UICR_CUSTOMER:
            raise ProgrammerError(
                "not a UICR customer register",
                address=flag.address,
                code=FailureCode.VALID_FLAG_FAILED,
            )
        call = functools.partial(
            self._link.write_word_checked, flag.address, flag.value, FailureCode.VALID_FLAG_FAILED
        )
        await self._run("valid flag", WriteFailed, call, address=flag.address)

    async def lock(self) -> None:
        """UICR.APPROTECT = Enabled, proven: reset, reconnect, the part must refuse the debugger.

        Returns only once the part is locked; the session is closed afterwards.
        """
        await self._run("lock", WriteFailed, self._link.lock_and_prove, address=UICR_APPROTECT)

    async def disconnect(self) -> None:
        """Close the session; safe when not connected."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._link.close)

    async def abort(self) -> None:
        """Fail the operation in flight now: mark it aborted and close the probe under it."""
        with self._generation_lock:
            self._abort_generation += 1
        await asyncio.to_thread(self._link.cut)

    def shutdown(self) -> None:
        """Stop the worker thread (at station exit)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
