"""`fixture-agent plant pki ...`: the certificates of a secured plant broker.

A station CA for stations, a plant CA for the plant's services and the broker (why two:
:mod:`agent.plant.pki`), kept in one folder (``--dir``, layout: :mod:`agent.plant.pki_store`).
``broker`` writes what the shipped ``config/mosquitto/mosquitto.conf`` reads; ``revoke`` and
``crl`` re-sign the CRLs, ``--out`` copies them to the broker's folder (then reload mosquitto).
Refusals are one sentence, exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from agent.commands.common import CommandLineError
from agent.plant.pki import check_plant_name, check_station_id
from agent.plant.pki_store import CA_NAMES, KINDS, IssuedFiles, PkiFolder
from agent.wire.mqtt import BrokerEndpoint

STATION_DAYS, PLANT_DAYS, BROKER_DAYS, CA_DAYS, CRL_DAYS = 730, 365, 365, 3650, 30
CRL_WARN_DAYS = 7
MAX_DAYS = 36500


def register(sub: Any) -> None:
    """Add ``plant pki`` and its subcommands."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "pki", help="certificates for the plant broker: CAs, stations, plant roles, revocation")
    tools = parser.add_subparsers(dest="pki_command", required=True, metavar="STEP")
    _add_init(tools)
    _add_broker(tools)
    _add_signer(tools)
    _add_issue(tools, "station", "a station's certificate (station CA)", STATION_DAYS)
    _add_issue(tools, "plant", "a plant role's certificate (plant CA)", PLANT_DAYS)
    _add_revoke(tools)
    crl = _step(tools, "crl", "re-sign both CRLs with a fresh nextUpdate", _crl)
    crl.add_argument("--out", type=Path, help="copy the CRLs into the broker's TLS folder")
    crl.add_argument("--days", type=int, help="validity from now on (default: as at init)")
    _step(tools, "list", "what was issued and revoked, and when the CRLs expire", _list)
    drop = _step(tools, "disconnect", "drop a revoked client that is still connected",
                 _disconnect)
    drop.add_argument("name", metavar="NAME")
    drop.add_argument("--broker", required=True, metavar="ADDRESS",
                      help="the listener NAME uses, e.g. mqtts://mqtt.plant.example:8883")
    drop.add_argument("--ca", type=Path, required=True, help="CA that signed the broker "
                      "(plant-ca.pem)")


def _add_init(tools: Any) -> None:
    init = _step(tools, "init", "create the station CA and the plant CA", _init)
    init.add_argument("--org", default="fixture-agent", help="name in the CAs' subjects")
    init.add_argument("--ca-days", type=int, default=CA_DAYS, help="CA validity (days)")
    init.add_argument("--crl-days", type=int, default=CRL_DAYS,
                      help="how long each CRL is valid; refresh well before (default: %(default)s)")


def _add_broker(tools: Any) -> None:
    broker = _step(tools, "broker", "the broker's server certificate, CA certificates and CRLs",
                   _broker)
    broker.add_argument("--out", type=Path, required=True, help="the broker's TLS folder")
    broker.add_argument("--dns", action="append", default=[], help="host name (repeat)")
    broker.add_argument("--ip", action="append", default=[], help="IP address (repeat)")
    broker.add_argument("--days", type=int, default=BROKER_DAYS,
                        help="validity (default: %(default)s)")


def _add_signer(tools: Any) -> None:
    signer = _step(tools, "signer", "the factory-data signing service's server certificate "
                                    "(plant CA)", _signer)
    signer.add_argument("--out", type=Path, required=True, help="folder for signer.pem/.key")
    signer.add_argument("--dns", action="append", default=[], help="host name (repeat)")
    signer.add_argument("--ip", action="append", default=[], help="IP address (repeat)")
    signer.add_argument("--days", type=int, default=BROKER_DAYS,
                        help="validity (default: %(default)s)")


def _signer(args: argparse.Namespace) -> int:
    pki = PkiFolder(args.dir)
    issued = pki.issue_server("signer", dns=args.dns, ips=args.ip, out=args.out,
                              days=_days(args.days, "--days"), now=_now())
    _print_issued(issued, "server certificate of the")
    return 0


def _add_issue(tools: Any, kind: str, help_text: str, days: int) -> None:
    issue = _step(tools, f"issue-{kind}", help_text, _issue)
    issue.add_argument("name", metavar="ID" if kind == "station" else "NAME")
    issue.add_argument("--out", type=Path,
                       help="folder for NAME.pem and NAME.key (default: DIR/issued)")
    issue.add_argument("--days", type=int, default=days, help="validity (default: %(default)s)")
    issue.set_defaults(kind=kind)


def _add_revoke(tools: Any) -> None:
    revoke = _step(tools, "revoke", "revoke a name's certificates, or one serial; new CRLs",
                   _revoke)
    revoke.add_argument("name", nargs="?", metavar="NAME", help="every certificate of NAME")
    revoke.add_argument("--serial", help="one certificate (hex, as `pki list` shows it)")
    revoke.add_argument("--out", type=Path, help="copy the CRLs into the broker's TLS folder")


def _step(tools: Any, name: str, help_text: str, handler: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = tools.add_parser(name, help=help_text)
    parser.add_argument("--dir", type=Path, required=True, metavar="DIR",
                        help="the PKI folder (CA keys: keep it off the broker)")
    parser.set_defaults(handler=handler)
    return parser


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _days(value: int, option: str) -> int:
    if not 1 <= value <= MAX_DAYS:
        raise CommandLineError(f"{option} must be 1 to {MAX_DAYS} days")
    return value


def _init(args: argparse.Namespace) -> int:
    pki = PkiFolder(args.dir)
    pki.create(org=args.org, ca_days=_days(args.ca_days, "--ca-days"),
               crl_days=_days(args.crl_days, "--crl-days"), now=_now())
    for kind in KINDS:
        print(f"{CA_NAMES[kind]}: {pki.ca_cert_path(kind)} (key beside it, mode 0600)")
    print(f"CRLs valid {args.crl_days} days: refresh them with `fixture-agent plant pki crl` "
          "well before (docs/mqtt.md)")
    return 0


def _broker(args: argparse.Namespace) -> int:
    pki = PkiFolder(args.dir)
    issued = pki.issue_server("broker", dns=args.dns, ips=args.ip, out=args.out,
                              days=_days(args.days, "--days"), now=_now())
    _print_issued(issued, "server certificate of the")
    for path in pki.publish(args.out):
        print(f"  {path}")
    print("make broker.key readable by mosquitto (it reads it after dropping root), e.g. "
          "chgrp mosquitto broker.key && chmod 0640 broker.key")
    return 0


def _issue(args: argparse.Namespace) -> int:
    check = check_station_id if args.kind == "station" else check_plant_name
    check(args.name)
    pki = PkiFolder(args.dir)
    issued = pki.issue_client(args.name, kind=args.kind, out=args.out or args.dir / "issued",
                              days=_days(args.days, "--days"), now=_now())
    _print_issued(issued, args.kind)
    return 0


def _print_issued(issued: IssuedFiles, what: str) -> None:
    record = issued.record
    print(f"{what} {record.name}: {issued.cert}, key {issued.key} (mode 0600), serial "
          f"{record.serial}, valid until {record.not_after:%Y-%m-%d}")


def _revoke(args: argparse.Namespace) -> int:
    if (args.name is None) == (args.serial is None):
        raise CommandLineError("give a NAME or --serial, not both")
    pki = PkiFolder(args.dir)
    for record in pki.revoke(name=args.name, serial=args.serial, now=_now()):
        print(f"revoked {record.name} serial {record.serial}")
    _publish_crls(pki, args.out)
    print("a client connected before the reload stays connected: "
          "`fixture-agent plant pki disconnect NAME` drops it (docs/mqtt.md)")
    return 0


def _crl(args: argparse.Namespace) -> int:
    pki = PkiFolder(args.dir)
    pki.refresh_crls(now=_now(), days=None if args.days is None else _days(args.days, "--days"))
    _publish_crls(pki, args.out)
    return 0


def _publish_crls(pki: PkiFolder, out: Path | None) -> None:
    for kind in KINDS:
        print(f"{CA_NAMES[kind]} CRL {pki.crl_path(kind)} valid until "
              f"{pki.crl_next_update(kind):%Y-%m-%d %H:%M} UTC")
    if out is None:
        print("copy the CRLs to the broker's TLS folder (or give --out) and reload mosquitto")
        return
    pki.publish(out)
    print(f"copied to {out}: reload mosquitto now (systemctl reload mosquitto)")


def _list(args: argparse.Namespace) -> int:
    pki = PkiFolder(args.dir)
    inventory, now = pki.inventory(), _now()
    print(f"{'NAME':<24} {'CA':<8} {'USE':<9} {'SERIAL':<41} {'VALID UNTIL':<11} STATE")
    for kind in KINDS:
        for r in inventory.certificates(kind):
            state = (f"revoked {r.revoked_at:%Y-%m-%d}" if r.revoked_at else
                     "expired" if r.not_after <= now else "valid")
            print(f"{r.name:<24} {kind:<8} {r.use:<9} {r.serial:<41} "
                  f"{r.not_after:%Y-%m-%d}  {state}")
    for kind in KINDS:
        left = pki.crl_next_update(kind) - now
        warning = "" if left > dt.timedelta(days=CRL_WARN_DAYS) else (
            ": refresh it now (`pki crl`), an expired CRL locks every client out")
        print(f"{CA_NAMES[kind]} CRL expires in {left.days} days{warning}")
    return 0


def _disconnect(args: argparse.Namespace) -> int:
    import aiomqtt

    from agent.plant.pki_disconnect import disconnect

    try:
        endpoint = BrokerEndpoint.from_address(args.broker, ca=args.ca)
    except ValueError as exc:
        raise CommandLineError(f"--broker: {exc}") from None
    try:
        asyncio.run(disconnect(endpoint, pki=PkiFolder(args.dir), name=args.name, now=_now()))
    except (aiomqtt.MqttError, OSError) as exc:
        print(f"could not connect to {endpoint.address} as {args.name}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.name}: its connection on {endpoint.address} was taken over and closed; "
          "a revoked certificate cannot connect again")
    return 0
