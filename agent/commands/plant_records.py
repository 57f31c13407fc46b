"""`fixture-agent plant query|audit|backup`: the record database, on SQLite or PostgreSQL.

``query`` answers the buyer's and quality's questions (by serial, chip, signing key, firmware
set, manifest digest or job; first-pass yield; an export as CSV or JSON lines); ``audit`` checks
every station's hash chain and sequence; ``backup`` makes a consistent copy (SQLite's backup API,
or pg_dump: a copy of the files misses what is still in the WAL).

Exit codes: 0 found (or clean), 1 nothing found (or the audit found something), 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, get_args

from agent.commands.common import CommandLineError
from agent.commands.recorder import add_db_option, open_existing
from agent.plant.audit import audit
from agent.plant.trace import (
    CSV_COLUMNS,
    EARLIEST,
    LATEST,
    GroupBy,
    Lookup,
    csv_row,
    export,
    find,
    first_pass_yield,
    format_trace,
)


def _when(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text}: give a time zone, e.g. {text}+00:00")
    return when


def _add_range(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", type=_when, default=EARLIEST, metavar="ISO",
                        help="records finished at or after this time (with zone)")
    parser.add_argument("--until", type=_when, default=LATEST, metavar="ISO",
                        help="records finished before this time (with zone)")


def register(sub: Any) -> None:
    """Add ``plant query``, ``plant audit`` and ``plant backup``."""
    query = sub.add_parser("query", help="records by serial, chip, key, set, manifest or job; "
                                         "first-pass yield; export")
    add_db_option(query)
    what = query.add_mutually_exclusive_group(required=True)
    for by in get_args(Lookup):
        what.add_argument(f"--{by}", metavar="VALUE", help=f"every record of this {by}")
    what.add_argument("--yield-by", choices=get_args(GroupBy),
                      help="first-pass yield per station, job or set")
    what.add_argument("--export", choices=("csv", "jsonl"), help="every record, to stdout")
    _add_range(query)
    query.add_argument("--json", action="store_true", help="print JSON")
    query.set_defaults(handler=_query)
    check = sub.add_parser("audit", help="check every station's records: missing, duplicated, "
                                         "altered, broken chain links")
    add_db_option(check)
    check.add_argument("--station", action="append", metavar="ID", help="only this station")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(handler=_audit)
    backup = sub.add_parser("backup", help="a consistent copy of the record database")
    add_db_option(backup)
    backup.add_argument("dest", type=Path, metavar="DEST", help="file to write")
    backup.set_defaults(handler=_backup)


def _query(args: argparse.Namespace) -> int:
    if args.since >= args.until:
        raise CommandLineError("--since must be earlier than --until")
    return asyncio.run(_run_query(args))


async def _run_query(args: argparse.Namespace) -> int:
    backend = await open_existing(args.db)
    try:
        if args.export:
            return await _export(backend, args)
        if args.yield_by:
            rows = await first_pass_yield(backend, args.yield_by, since=args.since,
                                          until=args.until)
            if args.json:
                print(json.dumps([{args.yield_by: y.group, "units": y.units,
                                   "passed_first_time": y.passed_first_time,
                                   "first_pass_yield_percent": round(y.percent, 2)}
                                  for y in rows], indent=2))
            for y in [] if args.json else rows:
                print(f"{args.yield_by} {y.group}: {y.passed_first_time}/{y.units} units "
                      f"passed first time ({y.percent:.1f}%)")
            return 0 if rows else 1
        by, value = next((by, getattr(args, by)) for by in get_args(Lookup)
                         if getattr(args, by) is not None)
        records = await find(backend, by, value, since=args.since, until=args.until)
    finally:
        await backend.close()
    if not records:
        print(f"no record with {by} {value} in {args.db}", file=sys.stderr)
        return 1
    print(json.dumps(records, indent=2) if args.json else format_trace(records))
    return 0


async def _export(backend: Any, args: argparse.Namespace) -> int:
    writer = csv.writer(sys.stdout) if args.export == "csv" else None
    if writer is not None:
        writer.writerow(CSV_COLUMNS)
    async for record in export(backend, since=args.since, until=args.until):
        if writer is not None:
            writer.writerow(csv_row(record))
        else:
            sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
    return 0


def _audit(args: argparse.Namespace) -> int:
    async def run() -> list[Any]:
        backend = await open_existing(args.db)
        try:
            return await audit(backend, args.station)
        finally:
            await backend.close()

    found = asyncio.run(run())
    if args.json:
        print(json.dumps([station.as_json() for station in found], indent=2))
    else:
        for station in found:
            print("\n".join(station.sentences()))
        if not found:
            print("no records")
    return 0 if all(station.clean for station in found) else 1


def _backup(args: argparse.Namespace) -> int:
    async def run() -> None:
        backend = await open_existing(args.db)
        try:
            await backend.backup(args.dest)
        finally:
            await backend.close()

    if args.dest.exists():
        raise CommandLineError(f"{args.dest} exists: refusing to overwrite it")
    asyncio.run(run())
    print(f"backed up {args.db} to {args.dest}")
    return 0
