"""Fixtures: a private mosquitto per test, and the plant's recorder on it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from agent.plant.recorder import Recorder
from agent.plant.records import RecordStore, open_record_db
from agent.sim.broker import LocalBroker
from agent.sim.postgres import LocalPostgres
from agent.sim.stm32_bootloader import Stm32BootloaderSim
from agent.wire.mqtt import BrokerEndpoint, make_client
from agent.wire.topics import StationTopics


@pytest.fixture(autouse=True)
def _isolated_sim_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A station under test makes its simulation settings process-wide; undo that after."""
    from agent.sim.nrf52840 import settings

    monkeypatch.delenv(settings.BOARD_DIR_ENV, raising=False)
    monkeypatch.delenv(settings.TIMING_ENV, raising=False)
    yield
    settings.set_board_dir(None)
    settings.set_timing(None)


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Stm32BootloaderSim]:
    """A simulated STM32F4 bootloader serving ``tmp_path/tty`` at 2 Mbaud (fast tests)."""
    board = Stm32BootloaderSim(baud=2_000_000, parity="none")
    async with board.serving(tmp_path / "tty"):
        yield board


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[LocalBroker]:
    """mosquitto on a free 127.0.0.1 port with its own config, stopped after the test."""
    local = LocalBroker(tmp_path / "broker")
    await local.start()
    try:
        yield local
    finally:
        await local.stop()


@pytest.fixture
async def rejects(broker: LocalBroker) -> AsyncIterator[list[dict[str, Any]]]:
    """Every reject station st-test publishes during the test, decoded, in order."""
    client = make_client(BrokerEndpoint(host="127.0.0.1", port=broker.port),
                         client_id="plant-rejects")
    received: list[dict[str, Any]] = []

    async def collect() -> None:
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            received.append(json.loads(message.payload))

    async with client:
        await client.subscribe(StationTopics("st-test").rejects, qos=1)
        task = asyncio.create_task(collect())
        yield received
        task.cancel()


@dataclass
class PlantRecorder:
    """The recorder under test and its database."""

    recorder: Recorder
    db: aiosqlite.Connection
    path: Path

    async def count(self, station: str | None = None) -> int:
        """Records stored (for one station, or all)."""
        sql, params = "SELECT COUNT(*) FROM records", ()
        if station is not None:
            sql, params = sql + " WHERE station = ?", (station,)
        async with self.db.execute(sql, params) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def has(self, count: int) -> bool:
        """True once exactly ``count`` records are stored."""
        return await self.count() == count


@pytest.fixture
async def recorder(tmp_path: Path, broker: LocalBroker) -> AsyncIterator[PlantRecorder]:
    """The plant recorder, connected and subscribed before the test starts."""
    path = tmp_path / "plant" / "records.db"
    db = await open_record_db(path)
    rec = Recorder(endpoint=BrokerEndpoint(host="127.0.0.1", port=broker.port),
                   store=RecordStore(db))
    task = asyncio.create_task(rec.run())
    await asyncio.wait_for(rec.connected.wait(), 10)
    try:
        yield PlantRecorder(recorder=rec, db=db, path=path)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await db.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """A private PostgreSQL cluster for the whole run (initdb in a temp folder, free port)."""
    server = LocalPostgres()
    asyncio.run(server.start())
    try:
        yield server
    finally:
        asyncio.run(server.stop())


@pytest.fixture
def pg_url(postgres_server: LocalPostgres) -> str:
    """The URL of a fresh, empty database on the private cluster."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    return postgres_server.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The plant database on each engine: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "records.db")
    url: str = request.getfixturevalue("pg_url")
    return url


NRF_PROBE = "t1"  # the simulated probe the pyOCD backend tests use


@pytest.fixture
def boards(tmp_path: Path) -> Iterator[Path]:
    """A board directory for virtual nRF52840s, process-wide for the test."""
    from agent.sim.nrf52840 import set_board_dir

    root = tmp_path / "boards"
    set_board_dir(root)
    yield root
    set_board_dir(None)
    os.environ.pop("FIXTURE_AGENT_SIM_DIR", None)


@pytest.fixture
async def programmer(boards: Path) -> AsyncIterator[Any]:
    """The real pyOCD backend on the simulated probe ``sim:t1``."""
    from agent.hw.pyocd_programmer import PyOcdProgrammer

    prog = PyOcdProgrammer(probe_id=f"sim:{NRF_PROBE}")
    yield prog
    await prog.disconnect()
    prog.shutdown()


@pytest.fixture(scope="session")
def softhsm_token(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One SoftHSM2 token for the session (the library reads its configuration once per
    process); each signer test makes its own key on it."""
    from agent.demo.signer import init_token

    init_token(tmp_path_factory.mktemp("softhsm"))
