"""Attacks on the shipped plant broker (config/mosquitto/), each refused.

The broker runs the shipped configuration and ACL files with only ports, folders and user
changed (tests/secure_broker.py); every certificate comes from the product's PKI tool, or is
forged with its building blocks where the tool would refuse to make it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from agent.cli import main
from agent.plant.pki import Authority, PkiError
from agent.plant.pki_disconnect import disconnect
from agent.wire.mqtt import BrokerEndpoint, CheckedClient, PublishRefused, make_client
from agent.wire.topics import StationTopics, group_firmware_set
from tests.helpers import eventually
from tests.secure_broker import SecurePlant, secure_plant

A, B = StationTopics("st-a"), StationTopics("st-b")
GROUP_SET = group_firmware_set("line-a")


@pytest.fixture
async def plant(tmp_path: Path) -> AsyncIterator[SecurePlant]:
    async with secure_plant(tmp_path) as running:
        yield running


async def refused(endpoint: BrokerEndpoint) -> bool:
    """True when the broker does not accept a connection with this endpoint's certificate."""
    try:
        async with make_client(endpoint, client_id="probe"):
            return False
    except aiomqtt.MqttError:
        return True


async def first_message(client: CheckedClient) -> aiomqtt.Message:
    """The next message the client receives (a test that gets none fails, not hangs)."""
    async with asyncio.timeout(10):
        return await anext(aiter(client.messages))


async def can_write(client: CheckedClient, topic: str) -> bool:
    """True when the broker accepts a QoS 1 publish to ``topic`` (PUBACK success)."""
    try:
        await client.publish_checked(topic, b"{}")
    except PublishRefused:
        return False
    return True


async def test_a_station_writes_only_its_own_reports(plant: SecurePlant) -> None:
    async with make_client(plant.endpoint("st-a"), client_id="st-a") as station:
        assert [await can_write(station, t) for t in (A.status, A.records, A.rejects)] == [
            True, True, True]
        others = (B.status, B.records, B.rejects,  # another station's reports
                  A.job, A.firmware_set, A.command, A.acks, GROUP_SET,  # the plant's, to itself
                  B.job, "fixture/v1/other", "$SYS/broker/uptime")
        assert [topic for topic in others if await can_write(station, topic)] == []


@pytest.mark.parametrize("victim", ["st-b", "plant-recorder-1"])
async def test_a_station_asking_for_another_client_id_stays_itself(plant: SecurePlant,
                                                                   victim: str) -> None:
    async with make_client(plant.endpoint(victim), client_id=victim) as connected:
        async with make_client(plant.endpoint("st-a"), client_id=victim) as thief:
            assert await can_write(thief, A.status)  # the broker took st-a for the client id
            assert not await can_write(thief, StationTopics(victim).status)
        await connected.publish_checked(StationTopics(victim).status if victim == "st-b"
                                        else A.acks, b"{}")  # still connected


async def test_a_station_ca_certificate_with_a_plant_name_gets_nowhere(
        plant: SecurePlant) -> None:
    cert, key = plant.forge("plant-recorder-1", authority=plant.pki.authority("station"))
    assert await refused(plant.endpoint_with(cert, key, plant=True))
    async with make_client(plant.endpoint_with(cert, key, plant=False), client_id="x") as rogue, \
            make_client(plant.endpoint("plant-tools"), client_id="x") as tools, \
            make_client(plant.endpoint("st-a"), client_id="x") as station:
        await rogue.subscribe("fixture/v1/#", qos=1)
        await rogue.subscribe("$share/recorders/fixture/v1/station/+/records", qos=1)
        writes = (A.acks, A.job, A.firmware_set, A.command, GROUP_SET)
        assert [topic for topic in writes if await can_write(rogue, topic)] == []
        await station.publish_checked(A.records, b"a record")
        await tools.publish_checked(A.job, b"a job")
        # All it can read is what a station of that name could: its own job, say.
        await tools.publish_checked(StationTopics("plant-recorder-1").job, b"last")
        first = await first_message(rogue)
        assert (first.topic.value, first.payload) == ("fixture/v1/station/plant-recorder-1/job",
                                                      b"last")


@pytest.mark.parametrize("case", ["rogue CA", "no certificate", "expired", "revoked",
                                  "station certificate on the plant listener"])
async def test_refused_certificates(plant: SecurePlant, case: str) -> None:
    now = dt.datetime.now(dt.UTC)
    if case == "rogue CA":
        rogue = Authority.create("fixture-agent station CA", days=1, now=now)
        endpoint = plant.endpoint_with(*plant.forge("st-a", authority=rogue), plant=False)
    elif case == "no certificate":
        endpoint = plant.endpoint_with(None, None, plant=False)
    elif case == "expired":
        endpoint = plant.endpoint_with(*plant.forge(
            "st-a", authority=plant.pki.authority("station"), now=now - dt.timedelta(days=2),
            not_after=now - dt.timedelta(days=1)), plant=False)
    elif case == "revoked":
        endpoint = plant.endpoint("st-a")
        assert not await refused(endpoint)
        plant.pki.revoke(name="st-a", now=now)
        plant.publish_crls()
    else:
        endpoint = plant.endpoint("st-a", plant_listener=True)
    await eventually(lambda: refused(endpoint), what=f"{case} refused")  # after the reload
    assert not await refused(plant.endpoint("st-b"))  # the broker itself is fine


async def test_a_refused_certificate_fails_the_connect_at_once_saying_why(
        plant: SecurePlant) -> None:
    rogue = Authority.create("rogue CA", days=1, now=dt.datetime.now(dt.UTC))
    endpoint = plant.endpoint_with(*plant.forge("st-a", authority=rogue), plant=False)
    with pytest.raises(aiomqtt.MqttError) as caught:
        async with make_client(endpoint, client_id="st-a"):
            pass
    # Not "Operation timed out" 10 s later. The TLS alert's text ("unknown ca") follows when the
    # client reads the alert before the connection's reset discards it, which is not always.
    assert str(caught.value).startswith("the broker closed the connection before accepting it")


async def test_an_expired_crl_locks_every_station_out_until_refreshed(plant: SecurePlant) -> None:
    station = plant.endpoint("st-a")
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=31)
    plant.pki.refresh_crls(now=long_ago)  # nextUpdate a day ago
    plant.publish_crls()
    await eventually(lambda: refused(station), what="refused under an expired CRL")
    plant.pki.refresh_crls(now=dt.datetime.now(dt.UTC))
    plant.publish_crls()
    await eventually(lambda: _accepted(station), what="accepted after the refresh")


async def _accepted(endpoint: BrokerEndpoint) -> bool:
    return not await refused(endpoint)


async def test_a_revoked_station_still_connected_is_dropped_by_disconnect(
        plant: SecurePlant) -> None:
    station, canary = plant.endpoint("st-a"), plant.endpoint("st-canary")
    async with make_client(station, client_id="st-a", persistent=True,
                           session_expiry_s=3600) as connected:
        for name in ("st-a", "st-canary"):  # probing with st-a itself would take its place
            plant.pki.revoke(name=name, now=dt.datetime.now(dt.UTC))
        plant.publish_crls()
        await eventually(lambda: refused(canary), what="the reloaded CRL")
        await connected.publish_checked(A.status, b"{}")  # mosquitto keeps it on after a reload
        assert await asyncio.to_thread(main, [
            "plant", "pki", "disconnect", "st-a", "--dir", str(plant.pki.root), "--broker",
            f"mqtts://127.0.0.1:{plant.broker.port}", "--ca",
            str(plant.pki.ca_cert_path("plant"))]) == 0
        with pytest.raises(aiomqtt.MqttError):
            await first_message(connected)  # what ends the iteration: the connection is gone
    assert await refused(station)


async def test_disconnect_refuses_a_name_that_is_not_revoked(plant: SecurePlant) -> None:
    plant.endpoint("st-a")
    with pytest.raises(PkiError, match="revoke it first"):
        await disconnect(plant.endpoint_with(None, None, plant=False), pki=plant.pki,
                         name="st-a", now=dt.datetime.now(dt.UTC))


async def test_an_oversize_record_never_reaches_the_recorder(plant: SecurePlant) -> None:
    async with make_client(plant.endpoint("plant-recorder-1"), client_id="x") as recorder:
        await recorder.subscribe("$share/recorders/fixture/v1/station/+/records", qos=1)
        with pytest.raises(aiomqtt.MqttError, match="closed the connection"):  # at once
            async with make_client(plant.endpoint("st-a"), client_id="x") as station:
                await station.publish_checked(A.records, b"x" * (8 << 20))
        async with make_client(plant.endpoint("st-b"), client_id="x") as other:
            await other.publish_checked(B.records, b"small")
        first = await first_message(recorder)
        assert (first.topic.value, first.payload) == (B.records, b"small")
