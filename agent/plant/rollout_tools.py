"""Plant side of a rollout: publish a signed set to a station or a group, read who has what.

A set is published retained at QoS 1 (MQTT v5, the broker's PUBACK reason code checked) to
``fixture/v1/station/{id}/firmware-set`` or ``fixture/v1/group/{name}/firmware-set``; a station
that connects later still gets it. Rollout status is read from the stations' retained status
messages (``fixture/v1/station/+/status``), field ``rollout`` (:class:`RolloutSummary`).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

from pydantic import ValidationError

from agent.firmware.rollout import RolloutSummary, SetStatus
from agent.plant.publish import publish_retained
from agent.wire.mqtt import BrokerEndpoint, make_client
from agent.wire.topics import ALL_STATUS, StationTopics, group_firmware_set

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}$")  # station ids and group names (no wildcards)
MAX_STATUS_BYTES = 1024 * 1024


def set_topic(*, station: str | None = None, group: str | None = None) -> str:
    """The retained firmware-set topic of one station or one group."""
    if (station is None) == (group is None):
        raise ValueError("name either a station or a group")
    kind, name = ("station", station) if station is not None else ("group", group)
    if name is None or not NAME.match(name):
        raise ValueError(f"{kind} name {name!r} must match {NAME.pattern}")
    return StationTopics(name).firmware_set if kind == "station" else group_firmware_set(name)


async def publish_set(endpoint: BrokerEndpoint, topic: str, signed: bytes, *,
                      client_id: str) -> None:
    """Publish a signed set retained; raises if the broker refuses it (e.g. by ACL)."""
    await publish_retained(endpoint, topic, signed, client_id=client_id)


@dataclass(frozen=True)
class StationRollout:
    """What one station last said about its firmware sets."""

    station: str
    online: str
    rollout: RolloutSummary | None
    problem: str | None = None


async def collect_rollout(endpoint: BrokerEndpoint, *, client_id: str, quiet_s: float = 1.0,
                          max_s: float = 10.0) -> dict[str, StationRollout]:
    """Read every retained station status; stops after ``quiet_s`` without a new one."""
    found: dict[str, StationRollout] = {}
    async with make_client(endpoint, client_id=client_id) as client:
        await client.subscribe(ALL_STATUS, qos=1)
        messages = aiter(client.messages)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_s
        while (left := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(min(quiet_s, left)):
                    message = await anext(messages)
            except TimeoutError:
                break
            station = str(message.topic).split("/")[3]
            payload = message.payload if isinstance(message.payload, bytes) else b""
            found[station] = parse_status(station, payload)
    return found


def parse_status(station: str, payload: bytes) -> StationRollout:
    """The rollout part of one status message; never raises on a bad one, names the problem."""
    if len(payload) > MAX_STATUS_BYTES:
        return StationRollout(station, "?", None, "status too large")
    try:
        body = json.loads(payload)
        rollout = body.get("rollout")
        summary = RolloutSummary.model_validate(rollout) if rollout is not None else None
        return StationRollout(station, str(body.get("state", "?")), summary)
    except (ValueError, AttributeError, RecursionError, ValidationError) as exc:
        return StationRollout(station, "?", None, f"unreadable status: {str(exc)[:120]}")


def format_rollout(stations: dict[str, StationRollout]) -> str:
    """One line per station and set: station, online, product, set, state, reason."""
    lines = [f"{'STATION':<20} {'LINK':<8} {'PRODUCT':<14} {'SET':<24} {'STATE':<12} REASON"]
    for name in sorted(stations):
        entry = stations[name]
        if entry.rollout is None or not entry.rollout.sets:
            lines.append(f"{name:<20} {entry.online:<8} {'-':<14} {'-':<24} {'-':<12} "
                         f"{entry.problem or 'no firmware sets reported'}")
            continue
        for status in entry.rollout.sets:
            lines.append(_set_line(name, entry.online, status))
    return "\n".join(lines)


def _set_line(station: str, online: str, status: SetStatus) -> str:
    progress = (f" {status.images_ready}/{status.images_total}"
                if status.state == "prefetching" else "")
    reason = f"{status.code}: {status.reason}" if status.code else ""
    return (f"{station:<20} {online:<8} {status.product or '?':<14} {status.set_id:<24} "
            f"{status.state + progress:<12} {reason}")
