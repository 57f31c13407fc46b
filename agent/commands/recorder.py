"""`fixture-agent recorder` (plant side) and `fixture-agent trace SERIAL`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from agent.mqtt import BrokerEndpoint
from agent.recorder import Recorder, RecordStore, find_by_serial, open_record_db


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


def format_trace(records: list[dict[str, Any]]) -> str:
    """A person's view of every record of one serial."""
    lines = []
    for r in records:
        verdict = r["outcome"].upper()
        if r.get("failure"):
            f = r["failure"]
            verdict += f" ({f['code']} at {f['stage']}: {f['detail']})"
        lines += [
            f"serial {r['serial']}: {verdict}, routed to {r['routing']}",
            f"  programmed {r['started_at']} .. {r['finished_at']} on station {r['station']} "
            f"slot {r['slot']} (record {r['record_id']}, seq {r['seq']})",
            f"  chip {r['chip_uid']}, job {r['job_id']}, product {r['product']}",
            f"  firmware set {r['firmware_set_id']} (manifest sha256 {r['manifest_digest']})",
            f"  locked: {r['locked']}, valid flag: {r['valid_flag_set']}, "
            f"agent {r['agent_version']}",
        ]
        for image in r["images"]:
            check = "verified" if image["verified"] else "NOT verified"
            lines.append(f"    {image['name']:<14} {image['version']:<16} "
                         f"sha256 {image['sha256']}  key {image['key_ref']}  "
                         f"@0x{image['address']:08X}+{image['size']}  {check}")
    return "\n".join(lines)


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
