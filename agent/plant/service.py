"""The plant service: the recorder, and maybe the rollout engine and the console, in one process.

The one place that opens the plant database and wires the plant's parts. Each part gets its own
connection to the database: the recorder's transactions, the engine's and the console's reads
never share one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from agent.errors import AgentError
from agent.plant.backends import is_postgres_url, open_backend
from agent.plant.console.server import Console
from agent.plant.fleet import FleetWatch
from agent.plant.recorder import BATCH_MAX, DEFAULT_GROUP, QUEUE_SIZE, Recorder
from agent.plant.records import RecordStore
from agent.plant.rollout.engine import RolloutEngine
from agent.plant.rollout.store import RolloutStore, open_rollout_db
from agent.plant.rollout.yields import SqliteYields
from agent.wire.mqtt import RECONNECT_MAX_S, BrokerEndpoint


class PlantServiceError(AgentError):
    """The plant service cannot run as asked."""


@dataclass(frozen=True)
class PlantOptions:
    """What to run besides the recorder."""

    db: str  # a SQLite file, or a postgresql:// URL
    endpoint: BrokerEndpoint
    client_id: str = "plant-recorder"
    group: str = DEFAULT_GROUP
    queue_size: int = QUEUE_SIZE
    batch_max: int = BATCH_MAX
    reconnect_max_s: float = RECONNECT_MAX_S
    rollouts: bool = False
    console: tuple[str, int] | None = None  # (host, port); port 0 picks a free one
    operator_token: str | None = None
    tick_s: float = 1.0


@dataclass
class PlantParts:
    """The running parts, for the demo and tests."""

    recorder: Recorder
    fleet: FleetWatch | None
    engine: RolloutEngine | None
    console: Console | None


@contextlib.asynccontextmanager
async def plant_connections(path: Path, count: int) -> AsyncIterator[list[aiosqlite.Connection]]:
    """``count`` connections to the plant database (rollout tables in place), closed after."""
    opened: list[aiosqlite.Connection] = []
    try:
        for _ in range(count):
            opened.append(await open_rollout_db(path))
        yield opened
    finally:
        for db in opened:
            await db.close()


async def serve_plant(options: PlantOptions,
                      started: Callable[[PlantParts], None] | None = None) -> None:
    """Run the plant's parts until cancelled."""
    if (options.rollouts or options.console) and is_postgres_url(options.db):
        raise PlantServiceError(
            "--rollouts and --console keep their tables in a SQLite plant database for now; "
            "run them in a plant service on SQLite beside recorders on PostgreSQL")
    backend = await open_backend(options.db)
    try:
        parts_db = Path(options.db)
        async with plant_connections(parts_db, 2 if options.rollouts or options.console else 0) \
                as connections:
            recorder = Recorder(endpoint=options.endpoint, store=RecordStore(backend),
                                client_id=options.client_id, group=options.group,
                                queue_size=options.queue_size, batch_max=options.batch_max,
                                reconnect_max_s=options.reconnect_max_s)
            fleet = engine = console = None
            if options.rollouts or options.console:
                fleet = FleetWatch(endpoint=options.endpoint,
                                   client_id=f"{options.client_id}-fleet")
            if options.rollouts and fleet is not None:
                engine_db = connections[0]
                engine = RolloutEngine(store=RolloutStore(engine_db),
                                       yields=SqliteYields(engine_db), fleet=fleet,
                                       endpoint=options.endpoint, tick_s=options.tick_s,
                                       client_id=f"{options.client_id}-rollout")
            if options.console and fleet is not None:
                host, port = options.console
                console = Console(db=connections[1], fleet=fleet, host=host, port=port,
                                  operator_token=options.operator_token)
            async with asyncio.TaskGroup() as group:
                group.create_task(recorder.run(), name="recorder")
                for name, part in (("fleet", fleet), ("engine", engine), ("console", console)):
                    if part is not None:
                        group.create_task(part.run(), name=name)
                if console is not None:
                    await console.ready.wait()
                if started is not None:
                    started(PlantParts(recorder, fleet, engine, console))
    finally:
        await backend.close()
