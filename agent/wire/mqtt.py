"""aiomqtt with what production needs on top: PUBACK reason codes, v5 sessions, TLS, backoff.

aiomqtt 2.x waits for a QoS 1 PUBACK but throws its reason code away, so a publish the broker
refused (0x87 Not authorized under an ACL) looks like success. :class:`CheckedClient` keeps the
reason code per message id and :meth:`CheckedClient.publish_checked` raises on a refusal.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.errors import AgentError
from agent.wire.receive_window import WindowedClient


class PublishRefused(AgentError):
    """The broker answered a QoS 1 publish with a failure reason code."""

    def __init__(self, topic: str, reason: str) -> None:
        self.topic = topic
        self.reason = reason
        super().__init__(f"broker refused publish to {topic}: {reason}")


DEFAULT_BROKER = "127.0.0.1:1883"
_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


def parse_broker_address(text: str) -> tuple[str, int, bool]:
    """``HOST:PORT``, ``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]`` as (host, port, tls).

    The one form every command takes for ``--broker``; IPv6 hosts go in brackets
    (``[::1]:1883``). Raises ValueError with a sentence naming what is wrong.
    """
    expected = "expected HOST:PORT, mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
    scheme, has_scheme, _ = text.partition("://")
    if has_scheme and scheme not in _DEFAULT_PORTS:
        raise ValueError(f"broker address {text!r}: unknown scheme {scheme!r}; {expected}")
    url = urlsplit(text if has_scheme else f"//{text}")
    try:
        port = url.port
    except ValueError:
        raise ValueError(f"broker address {text!r}: the port is not 1..65535") from None
    extra = url.path or url.query or url.fragment or url.username or url.password
    if extra or not url.hostname or (port is None and not has_scheme):
        raise ValueError(f"broker address {text!r}: {expected}")
    if port == 0:
        raise ValueError(f"broker address {text!r}: the port is not 1..65535")
    return url.hostname, port or _DEFAULT_PORTS[scheme], scheme == "mqtts"


@dataclass(frozen=True)
class BrokerEndpoint:
    """Where and how to reach a broker.

    TLS is used when ``tls`` is set (an ``mqtts://`` address) or a CA bundle is given; without
    ``ca`` the system's trusted CAs verify the broker.
    """

    host: str
    port: int
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    keepalive_s: int = 30
    tls: bool = False

    @classmethod
    def from_address(cls, address: str, *, ca: Path | None = None, cert: Path | None = None,
                     key: Path | None = None) -> BrokerEndpoint:
        """The endpoint an address (see :func:`parse_broker_address`) and TLS files name."""
        host, port, tls = parse_broker_address(address)
        return cls(host=host, port=port, ca=ca, cert=cert, key=key, tls=tls)

    @property
    def address(self) -> str:
        """The endpoint as a person writes it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "mqtts" if self.tls or self.ca is not None else "mqtt"
        return f"{scheme}://{host}:{self.port}"

    def tls_context(self) -> ssl.SSLContext | None:
        """A verifying TLS context, or None for plain TCP (loopback demos and tests only)."""
        if self.ca is None and not self.tls:
            return None
        cafile = str(self.ca) if self.ca is not None else None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
        if self.cert is not None and self.key is not None:
            context.load_cert_chain(str(self.cert), str(self.key))
        return context


class _LastError(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger for paho that passes everything on and remembers the last error's text."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})
        self.last_error: str | None = None

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.ERROR:
            self.last_error = str(msg) % args if args else str(msg)
        super().log(level, msg, *args, **kwargs)


class CheckedClient(WindowedClient):
    """An aiomqtt client whose QoS 1 publishes report the broker's reason code (and whose
    received messages can be bounded: :class:`agent.wire.receive_window.WindowedClient`).

    When the broker closes the connection, a connect still waiting for its CONNACK and every
    publish still waiting for its PUBACK fail at once, saying why (a TLS alert such as an unknown
    CA or a revoked certificate, a packet above the broker's maximum): aiomqtt ignores the close
    and lets them run into their timeouts ("Operation timed out").
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reasons: dict[int, asyncio.Future[Any]] = {}
        # paho's log, still passed on to aiomqtt's logger, with its last error kept for the
        # messages below. (A paho on_log callback would do, but paho then formats every debug
        # line, received PUBLISH properties included: a tenth of a busy recorder's time.)
        self._paho_log = _LastError(self._logger)
        self._client.enable_logger(self._paho_log)  # type: ignore[arg-type]  # paho only logs

    def manual_ack(self) -> None:
        """From now on a received QoS 1 message is acknowledged only by :meth:`ack`.

        aiomqtt 2.x has no manual acknowledgement; paho (underneath) has.
        """
        self._client.manual_ack_set(True)

    def ack(self, message: aiomqtt.Message) -> None:
        """Send the PUBACK of ``message`` (with :meth:`manual_ack`; QoS 0 needs none)."""
        if message.qos > 0:
            self._client.ack(message.mid, message.qos)

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        # paho may close from the thread aiomqtt connects in: settle the futures on the loop.
        # It also closes when the client is collected, maybe after the loop has closed: then
        # nothing waits any more.
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._fail_waiters, self._connected)
        super()._on_socket_close(client, userdata, sock)

    def _on_socket_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        # aiomqtt registers the writer later, on the loop. A client torn down in between (a
        # service stopping while a packet was queued) closed the socket first, and asyncio then
        # logged a traceback for the dead descriptor (seen stopping the fleet demo). Register
        # only a socket that is still open; otherwise do what aiomqtt's own callback does.
        fileno = sock.fileno()

        def write() -> None:
            try:
                client.loop_write()
            except Exception as exc:  # the connection broke: aiomqtt's own reaction
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def register() -> None:
            if fileno > -1 and sock.fileno() == fileno:
                self._loop.add_writer(fileno, write)

        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(register)

    def _fail_waiters(self, connected: asyncio.Future[None]) -> None:
        last = self._paho_log.last_error  # e.g. "failed to receive on socket: [SSL: ...] ..."
        detail = f": {last}" if last else ""
        # A connect only while __aenter__ waits for this very CONNACK (it holds the lock).
        if connected is self._connected and not connected.done() and self._lock.locked():
            connected.set_exception(aiomqtt.MqttError(
                f"the broker closed the connection before accepting it{detail}"))
        for waiter in self._reasons.values():
            if not waiter.done():
                waiter.set_exception(aiomqtt.MqttError(
                    f"the broker closed the connection before acknowledging{detail}"))

    async def _wait_for(self, fut: Any, timeout: float | None) -> Any:
        """aiomqtt's wait for a CONNACK, SUBACK or disconnect, without losing a cancel.

        aiomqtt uses asyncio.wait_for, which in Python 3.11 returns the reply when it arrives in
        the same loop iteration as a cancel, and the cancel is gone: a station told to stop just
        as a SUBACK arrived went on serving, and its shutdown waited forever. asyncio.timeout
        (what wait_for became in 3.12) delivers the cancel whatever else completed.
        """
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(None if limit == math.inf else limit):
                return await fut
        except TimeoutError:
            raise aiomqtt.MqttError("Operation timed out") from None

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any,
                      properties: Any = None) -> None:
        # A SUBACK for a subscribe that was abandoned (its task cancelled, e.g. a station told
        # to stop) is expected, not an error: aiomqtt would log it with a traceback.
        if mid not in self._pending_subscribes:
            logging.getLogger(__name__).debug("SUBACK %d for an abandoned subscribe", mid)
            return
        super()._on_subscribe(client, userdata, mid, reason_codes, properties)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        waiter = self._reasons.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(reason_code)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_checked(self, topic: str, payload: bytes, *, retain: bool = False,
                              timeout: float | None = 10.0) -> None:
        """Publish at QoS 1 and wait for a successful PUBACK; raise PublishRefused otherwise.

        ``timeout=None`` waits as long as the connection lives (its loss fails the wait).
        """
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        info = self._client.publish(topic, payload, 1, retain)
        if info.rc != 0:
            raise aiomqtt.MqttCodeError(info.rc, f"could not publish to {topic}")
        self._reasons[info.mid] = waiter
        try:
            async with asyncio.timeout(timeout):
                reason = await waiter
        except TimeoutError:
            raise aiomqtt.MqttError(f"no PUBACK for {topic} within {timeout} s") from None
        finally:
            self._reasons.pop(info.mid, None)
        if getattr(reason, "is_failure", False):
            raise PublishRefused(topic, str(reason))


def make_client(endpoint: BrokerEndpoint, *, client_id: str, will: aiomqtt.Will | None = None,
                persistent: bool = False, session_expiry_s: int = 0,
                max_packet_bytes: int | None = None, receive_maximum: int | None = None,
                manual_ack: bool = False) -> CheckedClient:
    """A v5 client; ``persistent`` keeps the broker-side session across reconnects.

    ``receive_maximum`` caps the QoS 1 messages the broker sends before we acknowledge them, and
    the messages we hold before reading more (:meth:`CheckedClient.limit_receive`: a broker may
    overrun the maximum); with ``manual_ack`` a message is acknowledged only by
    :meth:`CheckedClient.ack`.
    """
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if persistent and session_expiry_s:
        properties.SessionExpiryInterval = session_expiry_s
    if max_packet_bytes:
        properties.MaximumPacketSize = max_packet_bytes
    if receive_maximum:
        properties.ReceiveMaximum = receive_maximum
    tls = endpoint.tls_context()
    client = CheckedClient(
        endpoint.host, endpoint.port, identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5, keepalive=endpoint.keepalive_s, will=will,
        clean_start=not persistent, properties=properties, tls_context=tls, timeout=10.0,
    )
    if receive_maximum:
        client.limit_receive(receive_maximum)
    if manual_ack:
        client.manual_ack()
    return client


# Reconnect delays of every client (station and plant): a line must be back within seconds of a
# broker restart, and a plant's recorder no later than its stations. Dozens of stations retrying
# every few seconds is no load for a broker; jitter keeps them from arriving together.
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 5.0


class Backoff:
    """Capped exponential backoff with jitter: delays in [d/2, d], d doubling up to ``cap``."""

    def __init__(self, *, base: float, cap: float) -> None:
        self._base = base
        self._cap = cap
        self._attempt = 0

    def reset(self) -> None:
        """Back to the shortest delay (after a connection that held)."""
        self._attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt."""
        ceiling = min(self._cap, self._base * 2 ** min(self._attempt, 30))
        self._attempt += 1
        return random.uniform(ceiling / 2, ceiling)
