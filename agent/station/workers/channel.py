"""The typed channel between the station and a slot's worker process.

Frames on a Unix socket pair: a 4-byte big-endian length, then a pickle of one message below.
Pickle is fine here because both ends are this program: the worker is the station's own child on
a private socket pair, never a peer on a network. Both ends are asyncio streams, so neither side's
event loop ever blocks on the other. An exception travels as data (:class:`ErrorInfo`) and is
rebuilt on the station's side: the errors' keyword-only constructors do not survive pickling, and
this way a failure keeps its code, region and address whatever raised it.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from dataclasses import dataclass
from typing import Any

from agent import errors
from agent.errors import FailureCode, ProgrammerError

_LENGTH = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024 + 4096  # the largest image plus its envelope


@dataclass(frozen=True, slots=True)
class Call:
    """Station -> worker: run ``method(*args)`` on the slot's programmer."""

    call_id: int
    method: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Abort:
    """Station -> worker: make the operation in flight fail now."""


@dataclass(frozen=True, slots=True)
class Stop:
    """Station -> worker: close the programmer and exit."""


@dataclass(frozen=True, slots=True)
class Ready:
    """Worker -> station: started, imports and discovery done."""

    pid: int


@dataclass(frozen=True, slots=True)
class Result:
    """Worker -> station: ``call_id`` returned ``value``."""

    call_id: int
    value: Any


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An exception as data: the agent.errors class it is (or is nearest to), and its fields."""

    kind: str
    detail: str
    code: str
    region: str | None = None
    address: int | None = None

    @classmethod
    def of(cls, error: BaseException) -> ErrorInfo:
        """Describe ``error``; anything that is not a ProgrammerError is an internal error."""
        if isinstance(error, ProgrammerError):
            kind = next(c.__name__ for c in type(error).__mro__
                        if getattr(errors, c.__name__, None) is c)
            return cls(kind=kind, detail=error.detail, code=error.code.value,
                       region=error.region, address=error.address)
        return cls(kind="ProgrammerError", detail=f"{type(error).__name__}: {error}",
                   code=FailureCode.INTERNAL.value)

    def rebuild(self) -> ProgrammerError:
        """The exception on this side, with its code, region and address."""
        kind = getattr(errors, self.kind, ProgrammerError)
        if not (isinstance(kind, type) and issubclass(kind, ProgrammerError)):
            kind = ProgrammerError
        error: ProgrammerError = kind(self.detail, region=self.region, address=self.address,
                                      code=FailureCode(self.code))
        return error


@dataclass(frozen=True, slots=True)
class Failed:
    """Worker -> station: ``call_id`` raised."""

    call_id: int
    error: ErrorInfo


@dataclass(frozen=True, slots=True)
class FixtureRequest:
    """Worker -> station: drive the slot's fixture lines (BOOT0/NRESET), which the station owns."""

    request_id: int
    action: str
    kwargs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class FixtureDone:
    """Station -> worker: the fixture request is done (``error`` if it failed)."""

    request_id: int
    error: ErrorInfo | None = None


Message = Call | Abort | Stop | Ready | Result | Failed | FixtureRequest | FixtureDone


class Channel:
    """One end of the channel: send and receive whole messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def over(cls, sock: Any) -> Channel:
        """Wrap a connected Unix socket."""
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME)
        return cls(reader, writer)

    async def send(self, message: Message) -> None:
        """Send one message (waits while the pipe is full, never blocks the loop)."""
        body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._writer.write(_LENGTH.pack(len(body)) + body)
        await self._writer.drain()

    async def receive(self) -> Message:
        """The next message; EOFError when the other side has gone."""
        try:
            (length,) = _LENGTH.unpack(await self._reader.readexactly(_LENGTH.size))
            if length > MAX_FRAME:
                raise EOFError(f"frame of {length} bytes exceeds {MAX_FRAME}")
            body = await self._reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise EOFError("the other side closed the channel") from exc
        message: Message = pickle.loads(body)  # noqa: S301 (our own child, on a socketpair)
        return message

    def close(self) -> None:
        """Close this end."""
        self._writer.close()
