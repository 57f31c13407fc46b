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
from typing import Any, TypeVar

import aiomqtt

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


class WindowedClient(aiomqtt.Client):
    """aiomqtt, with a receive window (:meth:`limit_receive`) and batches (:meth:`take_received`).

    aiomqtt's own reader of the socket cannot be paused; this client replaces it with the same
    reads, which a full window pauses.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reader_fd: int | None = None
        self._reading_paused = False

    def limit_receive(self, window: int) -> None:
        """Hold at most about ``window`` received messages not yet taken from :attr:`messages`:
        at that many, stop reading the socket until one is taken (see this module).

        Call before connecting.
        """
        self._queue = ReceiveQueue(window, full=self._pause_reading, room=self._resume_reading)

    def take_received(self, most: int) -> list[aiomqtt.Message]:
        """Up to ``most`` received messages that are waiting now, without waiting for more."""
        taken: list[aiomqtt.Message] = []
        while len(taken) < most and not self._queue.empty():
            taken.append(self._queue.get_nowait())
        return taken

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        super()._on_socket_open(client, userdata, sock)
        # aiomqtt registers its reader from paho's connect thread, through the loop; ours, queued
        # after it, replaces it: the same reads, but one that a full receive window can pause.
        self._loop.call_soon_threadsafe(self._take_reader, sock.fileno())

    def _take_reader(self, fileno: int) -> None:
        self._reader_fd = fileno
        if self._reading_paused:
            self._loop.remove_reader(fileno)
        else:
            self._loop.add_reader(fileno, self._read_socket)

    def _read_socket(self) -> None:
        client = self._client
        try:
            while not self._reading_paused:
                client.loop_read()
                # an SSL socket may hold decoded bytes the selector will not report again
                pending = getattr(client.socket(), "pending", None)
                if pending is None or pending() == 0:
                    break
        except Exception as exc:  # the connection broke: what aiomqtt's own reader does
            if not self._disconnected.done():
                self._disconnected.set_exception(exc)

    def _pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            if self._reader_fd is not None:
                self._loop.remove_reader(self._reader_fd)

    def _resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            if self._reader_fd is not None:
                self._loop.add_reader(self._reader_fd, self._read_socket)
                self._loop.call_soon(self._read_socket)  # bytes SSL decoded before the pause

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        self._reader_fd = None
        super()._on_socket_close(client, userdata, sock)
