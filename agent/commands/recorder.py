"""`fixture-agent recorder` (plant side) and `fixture-agent trace SERIAL`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from agent.commands.common import add_broker_options, endpoint_from
from agent.plant.recorder import Recorder
from agent.plant.records import RecordStore, open_record_db
from agent.plant.trace import find_by_serial, format_trace
from agent.wire.mqtt import RECONNECT_MAX_S


def register(subparsers: Any) -> None:
    """Add the recorder's commands."""
    recorder = subparsers.add_parser("recorder", help="plant side: store and acknowledge records")
    recorder.add_argument("--db", type=Path, required=True, help="recorder database (SQLite)")
    recorder.add_argument("--reconnect-max-s", type=float, default=RECONNECT_MAX_S, metavar="S",
                          help="longest wait between reconnect attempts (default: %(default)s)")
    add_broker_options(recorder, client_id="plant-recorder")
    recorder.set_defaults(handler=_recorder)
    trace = subparsers.add_parser("trace", help="what was programmed on a serial, by whom")
    trace.add_argument("serial")
    trace.add_argument("--db", type=Path, required=True, help="recorder database (SQLite)")
    trace.add_argument("--json", action="store_true", help="print the records as JSON")
    trace.set_defaults(handler=_trace)


def _recorder(args: argparse.Namespace) -> int:
    endpoint = endpoint_from(args)

    async def serve() -> None:
        db = await open_record_db(args.db)
        try:
            await Recorder(endpoint=endpoint, store=RecordStore(db), client_id=args.client_id,
                           reconnect_max_s=args.reconnect_max_s).run()
        finally:
            await db.close()

    asyncio.run(serve())
    return 0


def _trace(args: argparse.Namespace) -> int:
    async def lookup() -> list[dict[str, Any]]:
        if not args.db.exists():
            raise SystemExit(f"{args.db}: no such recorder database")
        db = await open_record_db(args.db)
        try:
            return await find_by_serial(db, args.serial)
        finally:
            await db.close()

    records = asyncio.run(lookup())
    if not records:
        print(f"no record of serial {args.serial} in {args.db}", file=sys.stderr)
        return 1
    print(json.dumps(records, indent=2) if args.json else format_trace(records))
    return 0
