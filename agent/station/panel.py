"""Panel rules: the slots of one clamp take serials in slot order.

A panel fixture clamps several boards at once and programs them in parallel; which slot reaches
its serial first depends on probe timing. Serials are still handed out in slot order (slot a gets
the first, slot b the next, ...), so a panel's labels follow its layout, and every serial is taken
durably, once, whatever order the slots finish in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


class SerialTurns:
    """Each slot takes its serial only after every slot before it took one or left the cycle."""

    def __init__(self, slots: Sequence[str]) -> None:
        self._order = list(slots)
        self._done = {slot: asyncio.Event() for slot in self._order}

    async def take(self, slot: str, take: Callable[[], Awaitable[T]]) -> T:
        """Wait for the slots before ``slot``, then run ``take`` (its serial)."""
        for earlier in self._order[: self._order.index(slot)]:
            await self._done[earlier].wait()
        try:
            return await take()
        finally:
            self._done[slot].set()

    def leave(self, slot: str) -> None:
        """``slot`` is out of the cycle (failed before its serial, or done): stop waiting on it."""
        self._done[slot].set()
