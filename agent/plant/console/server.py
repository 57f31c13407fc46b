"""The plant console: one small web page served by the plant service (aiohttp).

Read-only for anyone who can reach it: stations, yields, last units, rollouts, trace by serial.
Rollout actions (approve, pause, resume, abort) need the operator token as
``Authorization: Bearer TOKEN``; without one configured they are off. Live updates are pushed as
server-sent events: station status and finished units as the broker delivers them (through
:class:`~agent.plant.fleet.FleetWatch`), rollouts whenever a new decision is stored (by the engine
or by a command in another process: the database is the place they meet). It reads and acts
through a backend of its own (:mod:`agent.plant.backends`: SQLite or PostgreSQL).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from dataclasses import asdict
from importlib import resources
from typing import Any

from aiohttp import web

from agent.errors import AgentError
from agent.plant.backends import Backend
from agent.plant.fleet import FleetWatch
from agent.plant.rollout.actions import ACTIONS, apply_action
from agent.plant.rollout.report import rollout_json
from agent.plant.rollout.store import RolloutStore
from agent.plant.rollout.yields import RecordYields
from agent.plant.trace import find_by_serial

log = logging.getLogger(__name__)
POLL_DECISIONS_S = 0.5
MAX_CLIENTS = 64
STATIC = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
          "/app.css": ("app.css", "text/css")}


class ConsoleUnavailable(AgentError):
    """The console's address cannot be served (in use, not this machine's)."""


class Console:
    """The web console; ``run()`` serves until cancelled, ``url`` says where."""

    def __init__(self, *, backend: Backend, fleet: FleetWatch, host: str, port: int,
                 operator_token: str | None) -> None:
        self._backend = backend
        self._store = RolloutStore(backend)
        self._yields = RecordYields(backend)
        self._fleet = fleet
        self._host, self._port = host, port
        self._token = operator_token
        self._clients: set[asyncio.Queue[tuple[str, Any]]] = set()
        self.ready = asyncio.Event()
        self.url = ""
        fleet.listeners.append(self._push)

    def app(self) -> web.Application:
        """The routes."""
        app = web.Application()
        for path in STATIC:
            app.router.add_get(path, self._static)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/trace", self._trace)
        app.router.add_get("/events", self._events)
        app.router.add_post("/api/rollouts/{rollout_id:\\d+}/{action}", self._action)
        return app

    async def run(self) -> None:
        """Serve until cancelled."""
        # open event streams end with the service, not after a minute of grace
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            try:
                await site.start()
            except OSError as exc:
                raise ConsoleUnavailable(f"the console cannot listen on {self._host}:"
                                         f"{self._port}: {exc.strerror or exc}") from None
            port = runner.addresses[0][1] if runner.addresses else self._port
            self.url = f"http://{self._host}:{port}/"
            self.ready.set()
            await self._watch_decisions()
        finally:
            await runner.cleanup()

    # ---- pushing -------------------------------------------------------------------------------

    def _push(self, kind: str, body: Any) -> None:
        for queue in self._clients:
            if queue.qsize() < 1000:  # a stalled browser loses events, not the plant's memory
                queue.put_nowait((kind, body))

    async def _watch_decisions(self) -> None:
        last = -1
        while True:
            rows = await self._backend.fetch("SELECT COALESCE(MAX(decision_id), 0)"
                                             " FROM rollout_decisions")
            newest = int(rows[0][0]) if rows else 0
            if newest != last:
                last = newest
                self._push("rollouts", await self._rollouts())
            await asyncio.sleep(POLL_DECISIONS_S)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if len(self._clients) >= MAX_CLIENTS:
            raise web.HTTPServiceUnavailable(text="too many console windows open")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._clients.add(queue)
        try:
            await response.write(b": hello\n\n")
            while True:
                try:
                    kind, body = await asyncio.wait_for(queue.get(), 15)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                await response.write(f"event: {kind}\ndata: {json.dumps(body)}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(queue)
        return response

    # ---- reading -------------------------------------------------------------------------------

    async def _static(self, request: web.Request) -> web.Response:
        name, content_type = STATIC[request.path]
        text = resources.files("agent.plant.console").joinpath(name).read_text()
        return web.Response(text=text, content_type=content_type)

    async def _rollouts(self) -> list[dict[str, Any]]:
        ids = await self._store.ids()
        return [rollout_json(await self._store.load(i)) for i in reversed(ids[-20:])]

    async def _state(self, request: web.Request) -> web.Response:
        yields = await self._yields.station_yields()
        body = {
            "stations": [v.as_json() for _, v in sorted(self._fleet.stations.items())],
            "yields": {s: {"units": y.units, "passed_first": y.passed_first,
                           "fpy_pct": y.fpy_pct} for s, y in yields.items()},
            "units": [asdict(u) for u in await self._yields.last_units(limit=30)],
            "rollouts": await self._rollouts(),
            "actions": self._token is not None,
        }
        return web.json_response(body)

    async def _trace(self, request: web.Request) -> web.Response:
        serial = request.query.get("serial", "").strip()
        if not serial or len(serial) > 64:
            return _sentence(400, "give a serial, e.g. SN-001000")
        return web.json_response({"serial": serial,
                                  "records": await find_by_serial(self._backend, serial)})

    # ---- acting --------------------------------------------------------------------------------

    async def _action(self, request: web.Request) -> web.Response:
        if self._token is None:
            return _sentence(403, "rollout actions are off: this console has no operator token")
        offered = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not offered or not hmac.compare_digest(offered.encode(), self._token.encode()):
            return _sentence(401, "an operator token is needed for rollout actions")
        action = request.match_info["action"]
        if action not in ACTIONS:
            return _sentence(404, f"no action {action!r}; use one of {', '.join(ACTIONS)}")
        rollout_id = int(request.match_info["rollout_id"])
        try:
            done = await apply_action(self._store, rollout_id, action, by="console")
        except AgentError as exc:
            return _sentence(409, str(exc))
        self._push("rollouts", await self._rollouts())
        return web.json_response({"ok": True, "message": done})


def _sentence(status: int, message: str) -> web.Response:
    return web.json_response({"ok": False, "message": message}, status=status)


async def close_quietly(task: asyncio.Task[None]) -> None:
    """Cancel a console task and wait for it."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
