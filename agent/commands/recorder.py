"""`fixture-agent recorder` (plant side) and `fixture-agent trace SERIAL`.

``--db`` is a SQLite file or a ``postgresql://`` URL; any number of recorders on one PostgreSQL
share the records through one shared subscription (``--group``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from agent.commands.common import CommandLineError, add_broker_options, endpoint_from
from agent.errors import AgentError
from agent.plant.backends import Backend, open_backend
from agent.plant.recorder import BATCH_MAX, DEFAULT_GROUP, QUEUE_SIZE
from agent.plant.trace import find_by_serial, format_trace
from agent.wire.mqtt import RECONNECT_MAX_S

DB_HELP = "recorder database: a SQLite file, or a postgresql://USER@HOST/DB URL"


def count_in(low: int, high: int) -> Any:
    """An argparse type: a whole number from ``low`` to ``high``, or a sentence saying so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from {low} to {high}")
        return value
    return parse


def add_db_option(parser: argparse.ArgumentParser) -> None:
    """--db, the same for every command that reads or writes records."""
    parser.add_argument("--db", required=True, metavar="PATH|URL", help=DB_HELP)


async def open_existing(target: str) -> Backend:
    """Open the database ``target`` names; a SQLite path must exist (a typo makes no new file)."""
    is_url = target.startswith(("postgresql://", "postgres://"))
    if not is_url and not await asyncio.to_thread(Path(target).exists):
        raise SystemExit(f"{target}: no such recorder database")
    return await open_backend(target)


def register(subparsers: Any) -> None:
    """Add the recorder's commands."""
    recorder = subparsers.add_parser("recorder", help="plant side: store and acknowledge records")
    add_db_option(recorder)
    recorder.add_argument("--group", default=DEFAULT_GROUP,
                          help="shared-subscription group of the recorders that split the "
                               "records (default: %(default)s)")
    recorder.add_argument("--queue-size", type=count_in(1, 65535), default=QUEUE_SIZE,
                          metavar="N", help="MQTT v5 Receive Maximum, and the received messages "
                          "held before reading more (default: %(default)s)")
    recorder.add_argument("--batch-max", type=count_in(1, 100_000), default=BATCH_MAX,
                          metavar="N",
                          help="records per transaction, at most (default: %(default)s)")
    recorder.add_argument("--reconnect-max-s", type=float, default=RECONNECT_MAX_S, metavar="S",
                          help="longest wait between reconnect attempts (default: %(default)s)")
    recorder.add_argument("--rollouts", action="store_true",
                          help="also run the rollout engine (plans from `plant rollout start`)")
    recorder.add_argument("--console", metavar="HOST:PORT",
                          help="also serve the plant console there, e.g. 127.0.0.1:8080")
    recorder.add_argument("--operator-token-env", metavar="NAME",
                          help="environment variable holding the token that console rollout "
                               "actions need (without it the console is read-only)")
    recorder.add_argument("--tick-s", type=float, default=1.0, metavar="S",
                          help="how often the rollout engine looks (default: %(default)s)")
    add_broker_options(recorder, client_id="plant-recorder")
    recorder.set_defaults(handler=_recorder)
    trace = subparsers.add_parser("trace", help="what was programmed on a serial, by whom")
    trace.add_argument("serial")
    add_db_option(trace)
    trace.add_argument("--json", action="store_true", help="print the records as JSON")
    trace.set_defaults(handler=_trace)


def console_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); CommandLineError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise CommandLineError(f"--console: expected HOST:PORT, e.g. 127.0.0.1:8080, not {text!r}")
    return host, int(port)


def _recorder(args: argparse.Namespace) -> int:
    from agent.plant.service import PlantOptions, serve_plant

    token = None
    if args.operator_token_env:
        token = os.environ.get(args.operator_token_env)
        if not token:
            raise CommandLineError(f"--operator-token-env: {args.operator_token_env} is not set")
    options = PlantOptions(db=args.db, endpoint=endpoint_from(args), client_id=args.client_id,
                           group=args.group, queue_size=args.queue_size,
                           batch_max=args.batch_max,
                           reconnect_max_s=args.reconnect_max_s, rollouts=args.rollouts,
                           console=console_address(args.console) if args.console else None,
                           operator_token=token, tick_s=args.tick_s)

    def started(parts: Any) -> None:
        if parts.console is not None:
            print(f"plant console: {parts.console.url}", flush=True)

    problems: list[str] = []
    try:
        asyncio.run(serve_plant(options, started))
    except* AgentError as group:
        problems = [str(exc) for exc in group.exceptions]
    if problems:
        print(f"fixture-agent recorder: {'; '.join(problems)}", file=sys.stderr)
        return 1
    return 0


def _trace(args: argparse.Namespace) -> int:
    async def lookup() -> list[dict[str, Any]]:
        backend = await open_existing(args.db)
        try:
            return await find_by_serial(backend, args.serial)
        finally:
            await backend.close()

    records = asyncio.run(lookup())
    if not records:
        print(f"no record of serial {args.serial} in {args.db}", file=sys.stderr)
        return 1
    print(json.dumps(records, indent=2) if args.json else format_trace(records))
    return 0
