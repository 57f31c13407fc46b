"""`fixture-agent plant ...`: release keys, signing and verifying firmware sets.

Publishing sets and jobs and reading the stations' rollout status live in
:mod:`agent.commands.plant_publish`.

Exit codes: 0 success, 1 the set (or token, or broker) refused, 2 unusable input or configuration.
PINs and passphrases are read from environment variables named on the command line
(``--pin-env``, ``--passphrase-env``), so they appear neither in ``ps`` nor in shell history;
``--pin`` exists for labs and tests.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.commands import plant_pki, plant_publish, plant_records, plant_rollout, plant_signer
from agent.errors import AgentError, BadMessage, ConfigError, FirmwareSetError
from agent.firmware.antirollback import AntiRollbackStore
from agent.firmware.crypto import ALGORITHMS
from agent.firmware.trust import VerifiedSet, load_trust_store, verify_signed_set

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def register(subparsers: Any) -> None:
    """Add ``plant`` and its subcommands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "plant", help="plant tools: release keys, firmware sets and jobs, the broker's PKI"
    )
    sub = parser.add_subparsers(dest="plant_command", required=True, metavar="TOOL")
    _add_keygen(sub)
    _add_sign(sub)
    _add_verify(sub)
    plant_publish.register(sub)
    plant_rollout.register(sub)
    plant_pki.register(sub)
    plant_signer.register(sub)
    plant_records.register(sub)


def _add_token_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("PKCS#11 token (HSM or SoftHSM2)")
    group.add_argument("--pkcs11-module", type=Path, help="the token's PKCS#11 library (.so)")
    group.add_argument("--token-label", help="label of the token")
    group.add_argument("--key-label", help="label of the key pair on the token")
    group.add_argument("--pin", help="user PIN (prefer --pin-env)")
    group.add_argument("--pin-env", help="environment variable holding the user PIN")


def _add_keygen(sub: Any) -> None:
    parser = sub.add_parser("keygen", help="create a release key pair (file or token)")
    parser.add_argument("--alg", choices=ALGORITHMS, default="ed25519")
    parser.add_argument("--out", type=Path, default=Path(), help="folder for NAME.key/.pub")
    parser.add_argument("--name", default="release", help="file stem (default: release)")
    parser.add_argument("--key-id", help="the id stations know the key by (default: fingerprint)")
    parser.add_argument("--passphrase-env", help="encrypt the key file with this variable's value")
    _add_token_options(parser)
    parser.set_defaults(handler=keygen)


def _add_sign(sub: Any) -> None:
    parser = sub.add_parser("sign-set", help="sign a manifest (or add a signature to a set)")
    parser.add_argument("manifest", type=Path, metavar="MANIFEST")
    parser.add_argument("--key", type=Path, help="PEM private key file")
    parser.add_argument("--passphrase-env", help="variable holding the key file's passphrase")
    parser.add_argument("--key-id", help="key id in the signature (default: fingerprint)")
    parser.add_argument("--out", type=Path, help="output (default: MANIFEST.signed.json)")
    _add_token_options(parser)
    parser.set_defaults(handler=sign_set_command)


def _add_verify(sub: Any) -> None:
    parser = sub.add_parser("verify-set", help="verify a signed set exactly as a station does")
    parser.add_argument("signed", type=Path, metavar="SIGNED")
    parser.add_argument("--trust-store", type=Path, required=True, help="TOML with [trust]")
    parser.add_argument("--at", type=datetime.fromisoformat,
                        help="check validity at this ISO time (default: now)")
    parser.add_argument("--state", type=Path, help="a station's anti-rollback state file")
    parser.set_defaults(handler=verify_set_command)


def _secret(args: argparse.Namespace, value_attr: str, env_attr: str) -> str | None:
    """A secret given directly or through a named environment variable."""
    env_name = getattr(args, env_attr, None)
    if env_name:
        if env_name not in os.environ:
            raise ConfigError("command line", [f"environment variable {env_name} is not set"])
        return os.environ[env_name]
    value: str | None = getattr(args, value_attr, None)
    return value


def _token_args(args: argparse.Namespace) -> dict[str, Any] | None:
    """The token options, or None when no token is named; ConfigError when half are given."""
    if args.pkcs11_module is None:
        return None
    pin = _secret(args, "pin", "pin_env")
    missing = [name for name, value in (("--token-label", args.token_label),
                                        ("--key-label", args.key_label), ("--pin", pin))
               if not value]
    if missing:
        raise ConfigError("command line", [f"{', '.join(missing)} needed with --pkcs11-module"])
    return {"module": args.pkcs11_module, "token_label": args.token_label,
            "key_label": args.key_label, "pin": pin}


def _fail(code: int, message: str) -> int:
    print(message, file=sys.stderr)
    return code


def keygen(args: argparse.Namespace) -> int:
    """Generate a key pair into files, or on a token; print the station's trust entry."""
    from agent.plant.keys import generate_private_key, trust_entry_toml, write_key_pair

    try:
        token = _token_args(args)
        if token is not None:
            from agent.plant.pkcs11_signer import generate_on_token

            fingerprint, pem = generate_on_token(alg=args.alg, **token)
            key_id = args.key_id or fingerprint
            print(f"# key {token['key_label']!r} created on token {token['token_label']!r}")
        else:
            secret = _secret(args, "passphrase", "passphrase_env")
            files = write_key_pair(generate_private_key(args.alg), out_dir=args.out,
                                   name=args.name, key_id=args.key_id,
                                   passphrase=secret.encode() if secret else None)
            key_id, pem = files.key_id, files.public_pem
            print(f"# private key {files.private_path} (keep it off stations), "
                  f"public key {files.public_path}")
    except FileExistsError as exc:
        return _fail(EXIT_USAGE, f"refusing to overwrite {exc.filename}")
    except (ConfigError, AgentError) as exc:
        return _fail(EXIT_REFUSED, str(exc))
    print(trust_entry_toml(key_id=key_id, alg=args.alg, public_pem=pem), end="")
    return EXIT_OK


def sign_set_command(args: argparse.Namespace) -> int:
    """Sign MANIFEST with a key file or a token key and write the signed set."""
    from agent.plant.sign import sign_set

    out: Path = args.out or args.manifest.with_suffix(".signed.json")
    try:
        raw = args.manifest.read_bytes()
        token = _token_args(args)
        if token is not None:
            from agent.plant.pkcs11_signer import Pkcs11Signer

            with Pkcs11Signer(key_id=args.key_id, **token) as signer:
                signed, key_id = sign_set(raw, signer), signer.key_id
        elif args.key is not None:
            signed, key_id = _sign_with_file(args, raw)
        else:
            return _fail(EXIT_USAGE, "give --key FILE or --pkcs11-module with its options")
    except OSError as exc:
        return _fail(EXIT_USAGE, f"{exc.filename}: {exc.strerror}")
    except BadMessage as exc:
        return _fail(EXIT_USAGE, f"{args.manifest}: not a valid manifest: {exc}")
    except (AgentError, ValueError) as exc:
        return _fail(EXIT_REFUSED, str(exc))
    out.write_bytes(signed)
    print(f"signed {args.manifest} with key {key_id} -> {out}")
    return EXIT_OK


def _sign_with_file(args: argparse.Namespace, raw: bytes) -> tuple[bytes, str]:
    from agent.firmware.crypto import key_fingerprint
    from agent.plant.keys import load_private_key
    from agent.plant.sign import PemSigner, sign_set

    secret = _secret(args, "passphrase", "passphrase_env")
    key = load_private_key(args.key, secret.encode() if secret else None)
    signer = PemSigner(key, key_id=args.key_id or key_fingerprint(key.public_key()))
    return sign_set(raw, signer), signer.key_id


def verify_set_command(args: argparse.Namespace) -> int:
    """Run the station's verification; print a summary, or the reason code and why."""
    try:
        trust = load_trust_store(args.trust_store)
        raw = args.signed.read_bytes()
        accepted = AntiRollbackStore.load(args.state).view() if args.state else None
    except ConfigError as exc:
        return _fail(EXIT_USAGE, str(exc))
    except OSError as exc:
        return _fail(EXIT_USAGE, f"{exc.filename}: {exc.strerror}")
    except FirmwareSetError as exc:
        return _fail(EXIT_USAGE, f"{args.state}: {exc}")
    now = args.at or datetime.now(UTC)
    if now.tzinfo is None:
        return _fail(EXIT_USAGE, "--at needs a time zone, e.g. 2030-01-01T00:00:00+00:00")
    try:
        verified = verify_signed_set(raw, trust, now=now, accepted=accepted)
    except FirmwareSetError as exc:
        return _fail(EXIT_REFUSED, f"REFUSED {exc.code}: {exc.reason}")
    print(summary(verified))
    return EXIT_OK


def summary(verified: VerifiedSet) -> str:
    """What a person checks before a release goes out."""
    m = verified.manifest
    lines = [
        f"OK set {m.set_id} product {m.product} sequence {m.sequence}",
        f"digest sha256:{verified.digest}",
        f"signed by {', '.join(verified.key_ids)}",
        f"valid {m.not_before.isoformat()} .. {m.expires.isoformat()}",
        f"target {m.target.family} pyocd={m.target.pyocd_target} "
        f"bootloader={m.target.bootloader}",
        f"activation {m.activation.mode}"
        + (f" at {m.activation.at.isoformat()}" if m.activation.at else "")
        + f", lock {m.lock}",
    ]
    for image in m.as_firmware_set().ordered_images():
        lines.append(f"  {image.role:<11} {image.name:<16} 0x{image.address:08X} "
                     f"{image.size:>9} B sha256:{image.sha256[:16]} v{image.version} "
                     f"key {image.key_ref}")
    return "\n".join(lines)
