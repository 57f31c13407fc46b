"""The plant service: the recorder, and maybe the rollout engine and the console, in one process.

The one place that opens the plant database (a SQLite file or a ``postgresql://`` URL) and wires
the plant's parts. Each part gets a backend of its own (on SQLite its own connection, on
PostgreSQL its own pool): the recorder's batches, the engine's transitions and the console's
reads and actions never share a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent.plant.backends import Backend, open_backend
from agent.plant.console.server import Console
from agent.plant.fleet import FleetWatch
from agent.plant.recorder import BATCH_MAX, DEFAULT_GROUP, QUEUE_SIZE, Recorder
from agent.plant.records import RecordStore
from agent.plant.rollout.engine import RolloutEngine
from agent.plant.rollout.lease import engine_lease
from agent.plant.rollout.store import RolloutStore
from agent.plant.rollout.yields import RecordYields
from agent.wire.mqtt import RECONNECT_MAX_S, BrokerEndpoint


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


async def serve_plant(options: PlantOptions,
                      started: Callable[[PlantParts], None] | None = None) -> None:
    """Run the plant's parts until cancelled."""
    async with contextlib.AsyncExitStack() as backends:
        async def backend() -> Backend:
            opened = await open_backend(options.db)
            backends.push_async_callback(opened.close)
            return opened

        parts = await _build(options, backend)
        async with asyncio.TaskGroup() as group:
            for name, part in (("recorder", parts.recorder), ("fleet", parts.fleet),
                               ("engine", parts.engine), ("console", parts.console)):
                if part is not None:
                    group.create_task(part.run(), name=name)
            if parts.console is not None:
                await parts.console.ready.wait()
            if started is not None:
                started(parts)


async def _build(options: PlantOptions,
                 backend: Callable[[], Awaitable[Backend]]) -> PlantParts:
    """The parts ``options`` asks for, each on a backend of its own."""
    recorder = Recorder(endpoint=options.endpoint, store=RecordStore(await backend()),
                        client_id=options.client_id, group=options.group,
                        queue_size=options.queue_size, batch_max=options.batch_max,
                        reconnect_max_s=options.reconnect_max_s)
    if not options.rollouts and options.console is None:
        return PlantParts(recorder, None, None, None)
    fleet = FleetWatch(endpoint=options.endpoint, client_id=f"{options.client_id}-fleet")
    engine = console = None
    if options.rollouts:
        engine_db = await backend()
        engine = RolloutEngine(store=RolloutStore(engine_db), yields=RecordYields(engine_db),
                               fleet=fleet, endpoint=options.endpoint, tick_s=options.tick_s,
                               client_id=f"{options.client_id}-rollout",
                               lease=engine_lease(options.db))
    if options.console is not None:
        host, port = options.console
        console = Console(backend=await backend(), fleet=fleet, host=host, port=port,
                          operator_token=options.operator_token)
    return PlantParts(recorder, fleet, engine, console)
