"""`fixture-agent plant signer | signer-keys | quota | signer-audit`: the factory-data signer.

Exit codes as the other plant tools: 0 success, 1 refused (token, service), 2 unusable input.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import ssl
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
    serve.add_argument("--client-crl", type=Path, help="the station CA's CRL (station-ca.crl.pem"
                       "): revoked stations are refused; restart after a revocation")
    serve.add_argument("--device-ca-cert", type=Path, help="the device intermediate's "
                       "certificate (plant device-ca): issue device certificates too")
    serve.add_argument("--device-ca-key-label", help="label of its key on the same token")
    _add_token_options(serve)
    serve.set_defaults(handler=_serve)

    device_ca = sub.add_parser("device-ca", help="the device root (a file, keep it offline) and "
                                                 "the intermediate certificate of a token key")
    device_ca.add_argument("--root-dir", type=Path, required=True,
                           help="folder of device-root.pem/.key (created when missing)")
    device_ca.add_argument("--out", type=Path, required=True,
                           help="the intermediate's certificate (PEM)")
    device_ca.add_argument("--days", type=int, default=3650)
    _add_token_options(device_ca)
    device_ca.set_defaults(handler=_device_ca)

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
    audit.add_argument("--db", required=True, help="SQLite file or postgresql:// URL")
    which = audit.add_mutually_exclusive_group(required=True)
    which.add_argument("--serial")
    which.add_argument("--key-ref")
    audit.set_defaults(handler=_audit)


def _add_store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="the service's SQLite file, or a "
                        "postgresql:// URL")
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
    from agent.plant.signer_store_pg import open_signer_store

    token = _token(args)
    key, ref = open_key(**token)
    store = await open_signer_store(args.db)
    service = SigningService(store=store, jobs=job_folder(args.jobs), key=key, key_ref=ref,
                             rework_allowance=args.rework_allowance)
    ca_key = None
    try:
        certifier = None
        if getattr(args, "device_ca_cert", None) is not None:
            from cryptography import x509

            from agent.plant.certify import Certifier
            from agent.plant.device_ca import DeviceIntermediate

            ca_key, ca_ref = open_key(**(token | {"key_label": args.device_ca_key_label}))
            cert = x509.load_pem_x509_certificate(args.device_ca_cert.read_bytes())
            certifier = Certifier(service=service, ca=DeviceIntermediate(
                cert=cert, key=ca_key, key_ref=ca_ref))
        result: int = await body(service, certifier)
        return result
    finally:
        service.close()
        await store.close()
        key.__exit__(None, None, None)
        if ca_key is not None:
            ca_key.__exit__(None, None, None)


def _serve(args: argparse.Namespace) -> int:
    from agent.plant.signer_http import server_tls, serving

    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("command line", [f"--listen: expected HOST:PORT, found {args.listen}"])
    try:
        tls = server_tls(cert=args.cert, key=args.key, client_ca=args.client_ca,
                         client_crl=args.client_crl)
    except (OSError, ssl.SSLError) as exc:  # ssl names no file: say which ones were asked for
        files = ", ".join(str(p) for p in (args.cert, args.key, args.client_ca, args.client_crl)
                          if p is not None)
        raise ConfigError("command line", [f"cannot use the TLS files ({files}): "
                                           f"{exc.strerror or exc}"]) from None
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if (args.device_ca_cert is None) != (args.device_ca_key_label is None):
        raise ConfigError("command line", ["--device-ca-cert and --device-ca-key-label go "
                                           "together"])

    async def body(service: Any, certifier: Any) -> int:
        async with serving(service, host=host, port=int(port), tls=tls,
                           certifier=certifier) as bound:
            print(f"signing with {service.key_ref} on https://{host}:{bound}", flush=True)
            await asyncio.Event().wait()
        return EXIT_OK

    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_with_service(args, body))
    return EXIT_OK


def _device_ca(args: argparse.Namespace) -> int:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from agent.plant.device_ca import device_root, intermediate_certificate
    from agent.plant.pki import Authority, cert_pem, key_pem
    from agent.plant.signer_keys import open_key

    now = dt.datetime.now(dt.UTC)
    root_cert, root_key = args.root_dir / "device-root.pem", args.root_dir / "device-root.key"
    if not root_key.exists():
        args.root_dir.mkdir(parents=True, exist_ok=True)
        root = device_root("plant device root", days=args.days * 2, now=now)
        root_key.touch(mode=0o600)
        root_key.write_bytes(key_pem(root.key))
        root_cert.write_bytes(cert_pem(root.cert))
        print(f"device root: {root_cert} (key beside it, mode 0600: keep it offline)")
    key = serialization.load_pem_private_key(root_key.read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        print(f"{root_key} holds no EC private key")
        return EXIT_USAGE
    root = Authority(key, x509.load_pem_x509_certificate(root_cert.read_bytes()))
    try:
        token_key, ref = open_key(**_token(args))
    except AgentError as exc:
        print(exc)
        return EXIT_REFUSED
    with token_key:
        cert = intermediate_certificate(root, token_key.public_key(),
                                        name="plant device intermediate", days=args.days,
                                        now=now)
    args.out.write_bytes(cert_pem(cert))
    print(f"device intermediate {args.out} for {ref}")
    return EXIT_OK


def _quota(args: argparse.Namespace) -> int:
    from agent.plant.signer import job_folder

    job = job_folder(args.jobs)(args.job_id)
    if job is None:
        print(f"job {args.job_id} is not in {args.jobs}")
        return EXIT_REFUSED

    async def body() -> int:
        from agent.plant.signer_store_pg import open_signer_store

        store = await open_signer_store(args.db)
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
        from agent.plant.signer_store_pg import open_signer_store

        store = await open_signer_store(args.db)
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
