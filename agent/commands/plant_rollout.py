"""`fixture-agent plant rollout start|status|approve|pause|resume|abort`: yield-gated rollouts.

The plan and every decision live in the plant database (``--db``, the recorder's: a SQLite file
or a ``postgresql://`` URL); the rollout engine (``fixture-agent recorder --rollouts``) carries
them out. These commands only write the
plan or a person's decision, each checked against the rollout's state machine.
Exit codes: 0 done, 1 refused (e.g. a move the rollout's state does not allow), 2 unusable input.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from agent.commands.common import CommandLineError, add_broker_options, endpoint_from
from agent.errors import AgentError
from agent.plant.backends import is_postgres_url, redacted
from agent.plant.rollout.actions import ACTIONS, apply_action
from agent.plant.rollout.model import Gate, RolloutPlan, parse_waves
from agent.plant.rollout.report import format_rollout
from agent.plant.rollout.store import RolloutStore

GATE_KEYS = {"min_units": "min_units", "max_fpy_drop": "max_fpy_drop_pp",
             "failure_code": "failure_code", "max_failure_rate": "max_failure_rate_pct",
             "action": "action", "activation_timeout": "activation_timeout_s",
             "offline_timeout": "offline_timeout_s", "approve_each_wave": "approve_each_wave"}
T = TypeVar("T")


def register(sub: Any) -> None:
    """Add ``plant rollout`` and its subcommands."""
    parser = sub.add_parser("rollout", help="yield-gated rollouts of a set in waves")
    tools = parser.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")
    start = tools.add_parser("start", help="plan a rollout of SIGNED_SET to stations, in waves")
    start.add_argument("signed", type=Path, metavar="SIGNED_SET")
    target = start.add_mutually_exclusive_group(required=True)
    target.add_argument("--group", help="the stations that report this group (read from the "
                                        "broker)")
    target.add_argument("--stations", help="station ids in wave order, comma separated")
    start.add_argument("--waves", default="1,25%,100%",
                       help="cumulative wave sizes, counts or percentages (default: %(default)s)")
    start.add_argument("--gate", default="", metavar="KEY=VALUE,...",
                       help="min_units, max_fpy_drop (points), failure_code, max_failure_rate "
                            "(%%), action (pause|rollback), activation_timeout (s), "
                            "offline_timeout (s), approve_each_wave (yes|no)")
    start.add_argument("--hold", action="store_true", help="wait for `approve` before wave 1")
    start.add_argument("--trust-store", type=Path,
                       help="verify the set with the stations' trust store before planning")
    _common(start, broker=True)
    start.set_defaults(handler=start_command)
    status = tools.add_parser("status", help="rollouts, their waves and every decision")
    status.add_argument("rollout_id", nargs="?", type=int, metavar="ID")
    _common(status)
    status.set_defaults(handler=status_command)
    for name, action in ACTIONS.items():
        move = tools.add_parser(name, help=f"rollout ID is {action.done.split(':')[0]}")
        move.add_argument("rollout_id", type=int, metavar="ID")
        _common(move)
        move.set_defaults(handler=move_command, move=name)


def _common(parser: argparse.ArgumentParser, *, broker: bool = False) -> None:
    parser.add_argument("--db", required=True, metavar="PATH|URL",
                        help="the plant database: a SQLite file, or a postgresql://USER@HOST/DB "
                             "URL")
    parser.add_argument("--by", default=getpass.getuser(), help="who decides (default: you)")
    if broker:
        add_broker_options(parser, client_id="plant-rollout-cli", per_run=True)


def parse_gate(text: str) -> Gate:
    """``min_units=20,action=rollback`` -> Gate; CommandLineError names the bad part."""
    values: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in GATE_KEYS:
            raise CommandLineError(f"--gate: {part!r} is not KEY=VALUE with KEY one of "
                                   f"{', '.join(GATE_KEYS)}")
        field = GATE_KEYS[key.strip()]
        values[field] = (value.strip().lower() in ("yes", "true", "1")
                         if field == "approve_each_wave" else value.strip() or None)
    try:
        return Gate.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CommandLineError(f"--gate: {problems}") from None


def read_signed(path: Path) -> tuple[str, str, str]:
    """(set id, product, text) of a signed set file; it is verified by every station anyway."""
    try:
        text = path.read_text()
        manifest = json.loads(text)["manifest"]
        return str(manifest["set_id"]), str(manifest["product"]), text
    except OSError as exc:
        raise CommandLineError(f"{path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CommandLineError(f"{path}: not a signed firmware set ({exc})") from None


def check_signed(trust_store: Path, raw: bytes) -> None:
    """Verify as a station does; a refusal is an AgentError sentence (exit 1)."""
    from datetime import UTC, datetime

    from agent.errors import FirmwareSetError
    from agent.firmware.trust import load_trust_store, verify_signed_set

    trust = load_trust_store(trust_store)
    try:
        verify_signed_set(raw, trust, now=datetime.now(UTC))
    except FirmwareSetError as exc:
        raise RolloutRefused(f"the stations would refuse this set ({exc.code}): "
                             f"{exc.reason}") from None


class RolloutRefused(AgentError):
    """The plan is refused before it is stored."""


def start_command(args: argparse.Namespace) -> int:
    """Store the plan; the engine publishes wave 1 on its next look (unless --hold)."""
    set_id, product, text = read_signed(args.signed)
    if args.trust_store is not None:
        check_signed(args.trust_store, text.encode())
    try:
        waves = parse_waves(args.waves)
    except ValueError as exc:
        raise CommandLineError(str(exc)) from None
    gate = parse_gate(args.gate)
    if args.stations:
        stations = tuple(s.strip() for s in args.stations.split(",") if s.strip())
        target = "stations " + ",".join(stations)
    else:
        stations = tuple(asyncio.run(_group_members(args)))
        target = f"group {args.group}"
        if not stations:
            raise CommandLineError(f"no station on the broker reports group {args.group}")
    try:
        plan = RolloutPlan(set_id=set_id, product=product, signed_set=text, stations=stations,
                           waves=waves, gate=gate, target=target)
    except ValidationError as exc:
        raise CommandLineError("; ".join(e["msg"] for e in exc.errors())) from None
    rollout_id = asyncio.run(_create(args.db, plan, by=args.by, approved=not args.hold))
    print(f"rollout {rollout_id}: {set_id} to {target}, waves {','.join(waves)}, "
          f"{'awaiting approval' if args.hold else 'started'}")
    return 0


async def _group_members(args: argparse.Namespace) -> list[str]:
    from agent.plant.fleet import FleetWatch

    fleet = FleetWatch(endpoint=endpoint_from(args), client_id=args.client_id)
    task = asyncio.create_task(fleet.run())
    try:
        async with asyncio.timeout(10):
            await fleet.connected.wait()
        await asyncio.sleep(1.0)  # retained statuses arrive right after the subscribe
    except TimeoutError:
        raise CommandLineError(f"broker {args.broker} did not answer") from None
    finally:
        task.cancel()
    return fleet.group_members(args.group)


async def _with_store(target: str, work: Callable[[RolloutStore], Awaitable[T]]) -> T:
    # The plant service (the recorder) makes the database; a mistyped path here would make an
    # empty one that no rollout engine reads.
    if not is_postgres_url(target) and not await asyncio.to_thread(Path(target).exists):
        raise CommandLineError(f"{target}: no such plant database (the plant service creates it: "
                               f"fixture-agent recorder --db {target})")
    store = await RolloutStore.open(target)
    try:
        return await work(store)
    finally:
        await store.close()


async def _create(target: str, plan: RolloutPlan, *, by: str, approved: bool) -> int:
    return await _with_store(target, lambda store: store.create(plan, by=by, approved=approved))


def status_command(args: argparse.Namespace) -> int:
    """Print one rollout, or all, with waves, stations and decisions."""
    async def read(store: RolloutStore) -> str:
        ids = [args.rollout_id] if args.rollout_id is not None else await store.ids()
        return "\n\n".join([format_rollout(await store.load(i)) for i in ids]) or \
            f"no rollouts in {redacted(args.db)}"

    print(asyncio.run(_with_store(args.db, read)))
    return 0


def move_command(args: argparse.Namespace) -> int:
    """approve, pause, resume, abort: a person's decision, stored if the state allows it."""
    print(asyncio.run(_with_store(args.db, lambda store: apply_action(
        store, args.rollout_id, args.move, by=args.by))))
    return 0
