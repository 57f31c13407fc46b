"""`fixture-agent plant publish-set | publish-job | rollout-status`: what the plant sends stations.

A job is checked by the very decoder and model a station uses (``parse_inbound(Job, ...)``), so a
job the station would reject is refused here, with the same sentence, before it is published.
Exit codes: 0 success, 1 refused (by the checks or the broker), 2 unusable input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from agent.commands.common import add_broker_options, endpoint_from
from agent.errors import AgentError, BadMessage
from agent.wire.codec import parse_inbound
from agent.wire.messages import Job
from agent.wire.topics import StationTopics

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2
MAX_JOB_BYTES = 256 * 1024


def register(sub: Any) -> None:
    """Add the publishing tools to ``plant``."""
    _add_publish_set(sub)
    _add_publish_job(sub)
    _add_status(sub)


def _add_publish_set(sub: Any) -> None:
    parser = sub.add_parser("publish-set", help="publish a signed set (retained) to stations")
    parser.add_argument("signed", type=Path, metavar="SIGNED")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--station", help="one station id")
    target.add_argument("--group", help="a group of stations ([broker] group in their config)")
    parser.add_argument("--trust-store", type=Path, required=True,
                        help="verify with the stations' trust store before publishing")
    add_broker_options(parser, client_id="plant-firmware", per_run=True)
    parser.set_defaults(handler=publish_set_command, at=None, state=None)


def _add_publish_job(sub: Any) -> None:
    parser = sub.add_parser(
        "publish-job", help="publish a station's job (retained), checked as the station checks it",
        description="Give the job as a JSON file (--file, schema fixture-agent/job@1) or as "
                    "flags. The station programs it once its firmware set is staged.")
    parser.add_argument("--station", required=True, help="the station id")
    parser.add_argument("--file", type=Path, help="the job as JSON (instead of the flags below)")
    parser.add_argument("--clear", action="store_true",
                        help="remove the station's retained job instead of publishing one")
    flags = parser.add_argument_group("job as flags")
    flags.add_argument("--job-id", help="work order id, e.g. wo-1001")
    flags.add_argument("--product", help="product id; must match the firmware set's")
    flags.add_argument("--set-id", help="firmware set to program")
    flags.add_argument("--quantity", type=int, help="good units wanted")
    flags.add_argument("--serial-prefix", default="", help="e.g. SN- (default: none)")
    flags.add_argument("--first-serial", type=int, help="first serial number of the range")
    flags.add_argument("--last-serial", type=int,
                       help="last serial number (default: first + 2 x quantity, room for rework)")
    flags.add_argument("--serial-width", type=int, default=6, help="digits (default: 6)")
    flags.add_argument("--lock", action="store_true", help="lock each part after it passed")
    flags.add_argument("--recover-locked", action="store_true",
                       help="mass-erase locked parts to regain access (recorded per unit)")
    add_broker_options(parser, client_id="plant-jobs", per_run=True)
    parser.set_defaults(handler=publish_job_command)


def _add_status(sub: Any) -> None:
    parser = sub.add_parser("rollout-status", help="which station has which set in which state")
    parser.add_argument("--quiet", type=float, default=1.0, metavar="S",
                        help="stop after S seconds without another station (default: 1)")
    add_broker_options(parser, client_id="plant-firmware", per_run=True)
    parser.set_defaults(handler=rollout_status_command)


def _fail(code: int, message: str) -> int:
    print(message, file=sys.stderr)
    return code


def publish_set_command(args: argparse.Namespace) -> int:
    """Verify SIGNED as the stations will, then publish it retained to a station or group."""
    import aiomqtt

    from agent.commands.plant import verify_set_command
    from agent.plant.rollout_tools import publish_set, set_topic

    endpoint = endpoint_from(args)
    code = verify_set_command(args)
    if code != EXIT_OK:
        return code
    try:
        topic = set_topic(station=args.station, group=args.group)
        asyncio.run(publish_set(endpoint, topic, args.signed.read_bytes(),
                                client_id=args.client_id))
    except ValueError as exc:
        return _fail(EXIT_USAGE, str(exc))
    except (aiomqtt.MqttError, AgentError, OSError) as exc:
        return _fail(EXIT_REFUSED, f"not published to {endpoint.address}: {exc}")
    print(f"published to {topic} (retained)")
    return EXIT_OK


def job_from_args(args: argparse.Namespace) -> bytes:
    """The job's JSON, from --file or from the flags; not yet checked."""
    if args.file is not None:
        return bytes(args.file.read_bytes())
    missing = [flag for flag, value in (("--job-id", args.job_id), ("--product", args.product),
                                        ("--set-id", args.set_id), ("--quantity", args.quantity),
                                        ("--first-serial", args.first_serial)) if value is None]
    if missing:
        raise BadMessage("incomplete", f"give --file, or the flags {', '.join(missing)}")
    last = args.last_serial
    if last is None:
        last = args.first_serial + 2 * args.quantity - 1
    job: dict[str, Any] = {
        "schema": "fixture-agent/job@1", "job_id": args.job_id, "station": args.station,
        "product": args.product, "set_id": args.set_id, "quantity": args.quantity,
        "serials": {"prefix": args.serial_prefix, "first": args.first_serial, "last": last,
                    "width": args.serial_width},
        "lock": args.lock, "recover_locked": args.recover_locked}
    return json.dumps(job).encode()


def publish_job_command(args: argparse.Namespace) -> int:
    """Check a job exactly as the station will, then publish it retained to the station."""
    import aiomqtt

    from agent.plant.publish import publish_retained

    endpoint = endpoint_from(args)
    topic = StationTopics(args.station).job
    payload = b""
    if not args.clear:
        try:
            payload = job_from_args(args)
            job = parse_inbound(Job, payload, max_bytes=MAX_JOB_BYTES)
        except OSError as exc:
            return _fail(EXIT_USAGE, f"{exc.filename}: {exc.strerror}")
        except BadMessage as exc:
            return _fail(EXIT_REFUSED, f"job refused ({exc.code}): {exc.reason}")
        if job.station not in (None, args.station):
            return _fail(EXIT_REFUSED, f"job refused: it names station {job.station}, "
                                       f"not {args.station}")
    try:
        asyncio.run(publish_retained(endpoint, topic, payload, client_id=args.client_id))
    except (aiomqtt.MqttError, AgentError, OSError) as exc:
        return _fail(EXIT_REFUSED, f"not published to {endpoint.address}: {exc}")
    if args.clear:
        print(f"cleared the job of station {args.station} ({topic})")
    else:
        print(f"job {job.job_id}: {job.quantity} x {job.product} with set {job.set_id}, serials "
              f"{job.serials.format(job.serials.first)}..{job.serials.format(job.serials.last)}"
              f" -> {topic} (retained)")
    return EXIT_OK


def rollout_status_command(args: argparse.Namespace) -> int:
    """Print each station's firmware sets and their states from its retained status."""
    import aiomqtt

    from agent.plant.rollout_tools import collect_rollout, format_rollout

    endpoint = endpoint_from(args)
    try:
        stations = asyncio.run(collect_rollout(endpoint, client_id=args.client_id,
                                               quiet_s=args.quiet))
    except (aiomqtt.MqttError, OSError) as exc:
        return _fail(EXIT_REFUSED, f"broker {endpoint.address}: {exc}")
    print(format_rollout(stations))
    return EXIT_OK
