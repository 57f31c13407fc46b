"""A client-side bound on received messages: read less from the socket instead of growing.

MQTT v5 bounds the QoS 1 messages a broker sends before their PUBACKs by the client's Receive
Maximum. mosquitto 2.0.11 (Debian 12's) keeps to it only while no PUBACK comes back: with a
consumer acknowledging as it goes, a client with a maximum of 50 held hundreds of unread messages
(``tests/test_receive_window.py``; 2.0.13's change log lists "various fixes around inflight quota
management"). aiomqtt's queue of received messages is unbounded (a bound there drops messages), so a
recorder slower than its stations grew by hundreds of megabytes.

:class:`ReceiveQueue` replaces that queue: it never drops a message, but when ``window`` of them
wait it tells its client to stop reading the socket, and to read again once one is taken. TCP's
flow control then holds the broker, which queues the rest under its own limits
(``max_queued_messages``), where a fleet's broker configuration already accounts for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class ReceiveQueue(asyncio.Queue[T]):
    """An unbounded queue that calls ``full`` at ``window`` items and ``room`` below it."""

    def __init__(self, window: int, *, full: Callable[[], None],
                 room: Callable[[], None]) -> None:
        if window < 1:
            raise ValueError(f"a receive window holds at least one message, not {window}")
        super().__init__()  # no maxsize: a message already read from the socket is never dropped
        self.window = window
        self._full = full
        self._room = room

    # asyncio.Queue's own hooks (as PriorityQueue and LifoQueue use them): both put and
    # put_nowait, get and get_nowait pass through here.
    def _put(self, item: T) -> None:
        super()._put(item)
        if self.qsize() >= self.window:
            self._full()

    def _get(self) -> T:
        item = super()._get()
        if self.qsize() < self.window:
            self._room()
        return item
