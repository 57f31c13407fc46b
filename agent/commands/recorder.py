"""`fixture-agent recorder` (plant side) and `fixture-agent trace SERIAL`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from agent.plant.recorder import Recorder
from agent.plant.records import RecordStore, open_record_db
from agent.plant.trace import find_by_serial, format_trace
from agent.wire.mqtt import BrokerEndpoint


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    """--broker HOST:PORT and the TLS files, shared by the plant-side commands."""
    parser.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT of the broker")
    parser.add_argument("--ca", type=Path, help="CA bundle; enables TLS")
    parser.add_argument("--cert", type=Path, help="client certificate (PEM)")
    parser.add_argument("--key", type=Path, help="client key (PEM)")


def endpoint_from(args: argparse.Namespace) -> BrokerEndpoint:
    """The broker endpoint the arguments name."""
    host, _, port = args.broker.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"--broker: expected HOST:PORT, found {args.broker!r}")
    return BrokerEndpoint(host=host, port=int(port), ca=args.ca, cert=args.cert, key=args.key)


def register(subparsers: Any) -> None:
    """Add the recorder's commands."""
    recorder = subparsers.add_parser("recorder", help="plant side: store and acknowledge records")
    recorder.add_argument("--db", type=Path, required=True, help="recorder database (SQLite)")
    add_broker_arguments(recorder)
    recorder.set_defaults(handler=_recorder)
    trace = subparsers.add_parser("trace", help="what was programmed on a serial, by whom")
    trace.add_argument("serial")
    trace.add_argument("--db", type=Path, required=True, help="recorder database (SQLite)")
    trace.add_argument("--json", action="store_true", help="print the records as JSON")
    trace.set_defaults(handler=_trace)


def _recorder(args: argparse.Namespace) -> int:
    async def serve() -> None:
        db = await open_record_db(args.db)
        try:
            await Recorder(endpoint=endpoint_from(args), store=RecordStore(db)).run()
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
