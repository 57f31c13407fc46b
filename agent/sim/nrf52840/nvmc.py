"""Flash, UICR and the NVMC flash controller of the virtual nRF52840.

Flash semantics follow the part: erase sets every bit (0xFF), a write can only clear bits, writes
need NVMC.CONFIG = write-enable and erases erase-enable, and a "stuck" word (fault injection)
ignores writes. The arrays are the board's memory-mapped files, shared with other processes.
"""

from __future__ import annotations

import mmap
import time

from agent.sim.nrf52840.boards import FLASH_SIZE, PAGE_SIZE, UICR_BASE, UICR_SIZE
from agent.sim.nrf52840.timing import ERASE_ALL_S, WORD_WRITE_S, TimingModel

NVMC_BASE = 0x4001E000
READY, READYNEXT, CONFIG = 0x400, 0x408, 0x504
ERASEPAGE, ERASEALL, ERASEPCR0, ERASEUICR = 0x508, 0x50C, 0x510, 0x514
CONFIG_REN, CONFIG_WEN, CONFIG_EEN = 0, 1, 2


class FlashArrays:
    """Main flash and UICR backed by two shared mappings."""

    def __init__(self, flash: mmap.mmap, uicr: mmap.mmap, stuck_words: tuple[int, ...]) -> None:
        self.flash = flash
        self.uicr = uicr
        self.stuck_words = frozenset(stuck_words)

    def locate(self, address: int) -> tuple[mmap.mmap, int] | None:
        """The array holding ``address`` and the offset in it, or None."""
        if 0 <= address < FLASH_SIZE:
            return self.flash, address
        if UICR_BASE <= address < UICR_BASE + UICR_SIZE:
            return self.uicr, address - UICR_BASE
        return None

    def program(self, address: int, data: bytes) -> bytes:
        """AND ``data`` into the array at ``address`` (stuck words keep their value).

        Returns the bytes the array holds afterwards.
        """
        located = self.locate(address)
        if located is None:
            raise ValueError(f"0x{address:08X} is not flash or UICR")
        array, offset = located
        if len(data) == 4 and not address & 3 and address not in self.stuck_words:
            # the common case, one aligned word: integer AND instead of per-byte work
            word = int.from_bytes(array[offset : offset + 4], "little")
            new_word = (word & int.from_bytes(data, "little")).to_bytes(4, "little")
            array[offset : offset + 4] = new_word
            return new_word
        old = array[offset : offset + len(data)]
        new = bytearray(a & b for a, b in zip(old, data, strict=True))
        for index in range(len(data)):
            if (address + index) & ~3 in self.stuck_words:
                new[index] = old[index]
        array[offset : offset + len(data)] = new
        return bytes(new)

    def erase_page(self, address: int) -> None:
        """Erase the 4 KiB flash page holding ``address``."""
        start = address & ~(PAGE_SIZE - 1)
        if 0 <= start < FLASH_SIZE:
            self.flash[start : start + PAGE_SIZE] = b"\xff" * PAGE_SIZE

    def erase_uicr(self) -> None:
        """Erase UICR (which also clears UICR.APPROTECT)."""
        self.uicr[:] = b"\xff" * UICR_SIZE

    def erase_all(self) -> None:
        """Erase flash and UICR."""
        self.flash[:] = b"\xff" * FLASH_SIZE
        self.erase_uicr()


class Nvmc:
    """The flash controller: CONFIG, READY and the erase tasks, with time spent per operation.

    While the CPU runs (the flash algorithm), READY always reads 1 and the time the work would
    take is added to ``cpu_busy_s``, because emulated code does not advance the wall clock; the
    core then holds back its halt by that much. Through the debugger, READY reads 0 until the
    operation's deadline.
    """

    def __init__(self, arrays: FlashArrays, timing: TimingModel) -> None:
        self.arrays = arrays
        self.timing = timing
        self.config = CONFIG_REN
        self.cpu_running = False
        self.cpu_busy_s = 0.0
        self._ready_at = 0.0

    def reset(self) -> None:
        """System reset: back to read-only."""
        self.config = CONFIG_REN

    def _spend(self, seconds: float) -> None:
        if self.cpu_running:
            self.cpu_busy_s += seconds
        else:
            self._ready_at = max(self._ready_at, self.timing.busy_until(seconds))

    def read_reg(self, offset: int) -> int:
        """Read an NVMC register."""
        if offset in (READY, READYNEXT):
            return int(self.cpu_running or time.monotonic() >= self._ready_at)
        if offset == CONFIG:
            return self.config
        return 0

    def write_reg(self, offset: int, value: int) -> None:
        """Write an NVMC register; erase tasks only act with CONFIG = erase-enable."""
        if offset == CONFIG:
            self.config = value & 3
            return
        if self.config != CONFIG_EEN:
            return
        if offset in (ERASEPAGE, ERASEPCR0):
            self.arrays.erase_page(value)
            self._spend(self.timing.page_erase_s)
        elif offset == ERASEUICR and value & 1:
            self.arrays.erase_uicr()
            self._spend(self.timing.page_erase_s)
        elif offset == ERASEALL and value & 1:
            self.arrays.erase_all()
            self._spend(ERASE_ALL_S)

    def store(self, address: int, data: bytes) -> bytes:
        """A bus write to flash/UICR: programs when write-enabled, else changes nothing."""
        located = self.arrays.locate(address)
        if located is None:
            raise ValueError(f"0x{address:08X} is not flash or UICR")
        array, offset = located
        if self.config != CONFIG_WEN:
            return array[offset : offset + len(data)]
        self._spend(WORD_WRITE_S * max(1, len(data) // 4))
        return self.arrays.program(address, data)
