"""`fixture-agent plant signer | signer-keys | quota | signer-audit`: the factory-data signer.

Exit codes as the other plant tools: 0 success, 1 refused (token, service), 2 unusable input.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from agent.errors import AgentError, ConfigError

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def register(sub: Any) -> None:
    """Add the signing service and its tools to ``plant``."""
    from agent.commands.plant import _add_token_options

    serve = sub.add_parser("signer", help="run the factory-data signing service (HTTPS, "
                                          "station client certificates, keys on a token)")
    _add_store(serve)
    serve.add_argument("--listen", default="0.0.0.0:8443", metavar="HOST:PORT")
    serve.add_argument("--cert", type=Path, required=True, help="the service's TLS certificate "
                       "(plant CA: plant pki issue-server)")
    serve.add_argument("--key", type=Path, required=True, help="its private key")
    serve.add_argument("--client-ca", type=Path, required=True,
                       help="the station CA (only its certificates may ask)")
    _add_token_options(serve)
    serve.set_defaults(handler=_serve)

    keys = sub.add_parser("signer-keys", help="create or list the signing keys on the token")
    keys.add_argument("action", choices=("list", "create"))
    keys.add_argument("--alg", choices=("ed25519", "ecdsa-p256"), default="ed25519")
    _add_token_options(keys)
    keys.set_defaults(handler=_keys)

    quota = sub.add_parser("quota", help="a job's signing quota and its use")
    quota.add_argument("job_id", metavar="JOB")
    _add_store(quota)
    quota.set_defaults(handler=_quota)

    audit = sub.add_parser("signer-audit", help="the signing decisions for a serial or a key")
    audit.add_argument("--db", type=Path, required=True)
    which = audit.add_mutually_exclusive_group(required=True)
    which.add_argument("--serial")
    which.add_argument("--key-ref")
    audit.set_defaults(handler=_audit)


def _add_store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, required=True, help="the service's SQLite file")
    parser.add_argument("--jobs", type=Path, required=True,
                        help="folder of JOB_ID.json job files (as published to stations)")
    parser.add_argument("--rework-allowance", type=int, default=0, metavar="N",
                        help="units a job may sign beyond its quantity (default 0)")


def _token(args: argparse.Namespace) -> dict[str, Any]:
    from agent.commands.plant import _token_args

    token = _token_args(args)
    if token is None:
        raise ConfigError("command line", ["--pkcs11-module, --token-label, --key-label and a "
                                           "PIN are needed"])
    return token


def _keys(args: argparse.Namespace) -> int:
    from agent.plant.pkcs11_signer import generate_on_token
    from agent.plant.signer_keys import key_ref, list_keys

    if args.action == "list":
        args.key_label = args.key_label or "(every key)"
    try:
        token = _token(args)
        if args.action == "create":
            fingerprint, pem = generate_on_token(alg=args.alg, **token)
            ref = key_ref(token_label=token["token_label"], key_label=token["key_label"],
                          fingerprint=fingerprint)
            print(f"key {ref}\n{pem}", end="")
            return EXIT_OK
        del token["key_label"]
        for info in list_keys(**token):
            ref = key_ref(token_label=args.token_label, key_label=info.label,
                          fingerprint=info.fingerprint)
            print(f"{info.label}  {info.alg}  {ref}\n{info.public_pem}", end="")
    except AgentError as exc:
        print(exc)
        return EXIT_REFUSED
    return EXIT_OK


async def _with_service(args: argparse.Namespace, body: Any) -> int:
    from agent.plant.signer import SigningService, job_folder
    from agent.plant.signer_keys import open_key
    from agent.plant.signer_store import SqliteSignerStore

    key, ref = open_key(**_token(args))
    store = await SqliteSignerStore.open(args.db)
    service = SigningService(store=store, jobs=job_folder(args.jobs), key=key, key_ref=ref,
                             rework_allowance=args.rework_allowance)
    try:
        result: int = await body(service)
        return result
    finally:
        service.close()
        await store.close()
        key.__exit__(None, None, None)


def _serve(args: argparse.Namespace) -> int:
    from agent.plant.signer_http import server_tls, serving

    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("command line", [f"--listen: expected HOST:PORT, found {args.listen}"])
    tls = server_tls(cert=args.cert, key=args.key, client_ca=args.client_ca)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    async def body(service: Any) -> int:
        async with serving(service, host=host, port=int(port), tls=tls) as bound:
            print(f"signing with {service.key_ref} on https://{host}:{bound}", flush=True)
            await asyncio.Event().wait()
        return EXIT_OK

    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_with_service(args, body))
    return EXIT_OK


def _quota(args: argparse.Namespace) -> int:
    from agent.plant.signer import job_folder

    job = job_folder(args.jobs)(args.job_id)
    if job is None:
        print(f"job {args.job_id} is not in {args.jobs}")
        return EXIT_REFUSED

    async def body() -> int:
        from agent.plant.signer_store import SqliteSignerStore

        store = await SqliteSignerStore.open(args.db)
        try:
            used = len(await store.chips_signed(args.job_id))
        finally:
            await store.close()
        limit = job.quantity + args.rework_allowance
        print(f"job {job.job_id}: {used} of {limit} units signed ({job.quantity} ordered + "
              f"{args.rework_allowance} rework), {limit - used} left")
        return EXIT_OK

    return asyncio.run(body())


def _audit(args: argparse.Namespace) -> int:
    async def body() -> int:
        from agent.plant.signer_store import SqliteSignerStore

        store = await SqliteSignerStore.open(args.db)
        try:
            rows = await store.audit(serial=args.serial, key_ref=args.key_ref)
        finally:
            await store.close()
        for row in rows:
            what = row.decision if row.code is None else f"refused {row.code}: {row.reason}"
            print(f"{row.serial} chip {row.chip_uid} job {row.job_id} station {row.station}: "
                  f"{what}" + (f" (signature {row.signature_id}, key {row.key_ref})"
                               if row.signature_id else ""))
        if not rows:
            print("no signing decisions match")
        return EXIT_OK

    return asyncio.run(body())
