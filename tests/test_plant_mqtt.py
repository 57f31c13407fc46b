"""`plant publish-set` and `plant rollout-status` against a private mosquitto."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiomqtt
import pytest

from agent.cli import main
from agent.firmware.rollout import RolloutSummary, SetState, SetStatus
from agent.sim.broker import LocalBroker
from tests.firmware_support import NOW, Release, manifest_dict

OWNER = Release("owner")


async def retained(port: int, topic: str) -> bytes:
    async with aiomqtt.Client("127.0.0.1", port, identifier="probe",
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                return message.payload
    raise AssertionError("no message")


async def test_publish_set_verifies_then_publishes_retained(
    tmp_path: Path, broker: LocalBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    trust = tmp_path / "trust.toml"
    entry = OWNER.trusted()
    trust.write_text(f'[[trust.keys]]\nkey_id = "owner"\nalg = "ed25519"\n'
                     f'public_key_pem = """{entry.public_key_pem}"""\n')
    signed = tmp_path / "set.signed.json"
    signed.write_bytes(OWNER.sign(json.dumps(manifest_dict(
        not_before=NOW.replace(year=2000), expires=NOW.replace(year=2100))).encode()))
    broker_args = ["--broker", f"127.0.0.1:{broker.port}"]
    code = await asyncio.to_thread(main, ["plant", "publish-set", str(signed), "--group",
                                          "line-3", "--trust-store", str(trust), *broker_args])
    assert code == 0, capsys.readouterr().err
    payload = await retained(broker.port, "fixture/v1/group/line-3/firmware-set")
    assert payload == signed.read_bytes()
    bad = tmp_path / "bad.json"
    bad.write_bytes(Release("stranger").sign(json.dumps(manifest_dict()).encode()))
    code = await asyncio.to_thread(main, ["plant", "publish-set", str(bad), "--station",
                                          "st-1", "--trust-store", str(trust), *broker_args])
    assert code == 1
    assert "REFUSED unknown_key" in capsys.readouterr().err
    code = await asyncio.to_thread(main, ["plant", "publish-set", str(signed), "--station",
                                          "st/#", "--trust-store", str(trust), *broker_args])
    assert code == 2


async def test_rollout_status_lists_stations_and_sets(
    broker: LocalBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = "fixture/v1/station/{}/firmware-set"
    summary = RolloutSummary(active={"widget": "w-7"}, sets=(
        SetStatus(set_id="w-7", state=SetState.ACTIVE, source_topic=topic.format("st-1"),
                  at=NOW, product="widget"),
        SetStatus(set_id="w-8", state=SetState.FAILED, source_topic=topic.format("st-1"),
                  at=NOW, product="widget", code="hash_mismatch", reason="image app: ..."),
    ))
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="stations",
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        status = {"schema": "fixture-agent/status@1", "station": "st-1", "state": "online",
                  "rollout": json.loads(summary.model_dump_json())}
        await client.publish("fixture/v1/station/st-1/status", json.dumps(status), qos=1,
                             retain=True)
        await client.publish("fixture/v1/station/st-2/status", b'{"state": "offline"}', qos=1,
                             retain=True)
    code = await asyncio.to_thread(main, ["plant", "rollout-status", "--broker",
                                          f"127.0.0.1:{broker.port}", "--quiet", "0.5"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert any(line.split()[:5] == ["st-1", "online", "widget", "w-7", "active"]
               for line in lines)
    assert any("w-8" in line and "hash_mismatch" in line for line in lines)
    assert any(line.split()[:2] == ["st-2", "offline"] for line in lines)


def test_recorder_reconnects_no_slower_than_a_station_and_resets_on_success() -> None:
    from agent.config import BrokerSection
    from agent.plant.recorder import Recorder
    from agent.wire.mqtt import BrokerEndpoint

    recorder = Recorder(endpoint=BrokerEndpoint(host="127.0.0.1", port=1), store=None)  # type: ignore[arg-type]
    station_cap = BrokerSection.model_fields["reconnect_max_s"].default
    delays = [recorder.backoff.next_delay() for _ in range(40)]  # a long broker outage
    assert max(delays) <= station_cap <= 5.0  # back within seconds of the broker, not 30 s
    recorder.backoff.reset()  # what a successful subscribe does
    assert recorder.backoff.next_delay() <= 0.5
