"""`fixture-agent sim nrf52840 ...`: create and inspect simulated nRF52840 boards."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.sim.nrf52840 import boards, settings


def _board_dir(args: argparse.Namespace) -> Path:
    root: Path | None = args.dir or settings.board_dir()
    if root is None:
        raise SystemExit(f"give --dir or set {settings.BOARD_DIR_ENV}")
    return root


def _create(args: argparse.Namespace) -> int:
    root = _board_dir(args)
    if args.count > 1 and args.device_id is not None:
        raise SystemExit("--device-id names one board; leave it out with --count")
    device_id = None if args.device_id is None else int(args.device_id, 16)
    uids = [args.uid] if args.count == 1 else [f"{args.uid}-{n}" for n in range(1, args.count + 1)]
    for uid in uids:  # a panel: one probe per slot, one board under each
        created = boards.place_new_board(root, uid, device_id=device_id, locked=args.locked)
        print(f"sim:{uid} in {root}: new board DEVICEID {created:016x}" + " (locked)" * args.locked)
    return 0


def _list(args: argparse.Namespace) -> int:
    root = _board_dir(args)
    for uid in boards.list_probe_uids(root):
        try:
            spec = boards.read_spec(boards.current_board_dir(root, uid))
            print(f"sim:{uid}\tDEVICEID {spec.device_id:016x}")
        except boards.BoardError:
            print(f"sim:{uid}\t(empty)")
    return 0


def register(sim_subparsers: Any) -> None:
    """Add ``nrf52840 create`` and ``nrf52840 list`` under ``fixture-agent sim``."""
    parser = sim_subparsers.add_parser("nrf52840", help="virtual nRF52840 boards behind sim:<uid>")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = sub.add_parser("create", help="put a fresh blank board under a probe id")
    create.add_argument(
        "--dir", type=Path, help=f"board directory (default ${settings.BOARD_DIR_ENV})"
    )
    create.add_argument("--uid", default="0001", help="probe unique id (default 0001)")
    create.add_argument("--count", type=int, default=1, metavar="N",
                        help="a panel: N probes UID-1 .. UID-N, a board under each (default 1)")
    create.add_argument("--device-id", help="FICR DEVICEID as hex (default random)")
    create.add_argument("--locked", action="store_true", help="UICR.APPROTECT enabled")
    create.set_defaults(handler=_create)
    listing = sub.add_parser("list", help="probes and the boards under them")
    listing.add_argument(
        "--dir", type=Path, help=f"board directory (default ${settings.BOARD_DIR_ENV})"
    )
    listing.set_defaults(handler=_list)
