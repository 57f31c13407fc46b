"""What several commands share: the broker options, and the error a command reports as a sentence.

Every command that talks to a broker takes it the same way: ``--broker`` as ``HOST:PORT``,
``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]`` (default 127.0.0.1:1883), plus ``--ca``,
``--cert`` and ``--key`` for TLS with a client certificate.
"""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path

from agent.errors import AgentError
from agent.wire.mqtt import DEFAULT_BROKER, BrokerEndpoint


class CommandLineError(AgentError):
    """The command line asks for something unusable; printed as one sentence, exit code 2."""


def add_broker_options(parser: argparse.ArgumentParser, *, client_id: str,
                       per_run: bool = False) -> None:
    """--broker, TLS files and --client-id, with their defaults shown in --help.

    ``per_run`` gives a short-lived tool a fresh client id each run (``client_id`` plus a random
    suffix): a broker closes the older of two connections with one id, so two tools started
    together must not share one. A service with a persistent session keeps a fixed id.
    """
    if per_run:
        client_id = f"{client_id}-{secrets.token_hex(3)}"
    group = parser.add_argument_group("broker")
    group.add_argument("--broker", default=DEFAULT_BROKER, metavar="ADDRESS",
                       help="HOST:PORT, mqtt://HOST[:PORT] or mqtts://HOST[:PORT] "
                            "(default: %(default)s)")
    group.add_argument("--ca", type=Path, help="CA bundle that signed the broker's certificate "
                       "(enables TLS; mqtts:// without it uses the system's CAs)")
    group.add_argument("--cert", type=Path, help="client certificate (PEM), with --key")
    group.add_argument("--key", type=Path, help="client key (PEM), with --cert")
    group.add_argument("--client-id", default=client_id,
                       help="MQTT client id (default: %(default)s"
                            + (", new each run" if per_run else "")
                            + "; with a client certificate the broker may use its name instead)")


def endpoint_from(args: argparse.Namespace) -> BrokerEndpoint:
    """The broker endpoint the options name, or CommandLineError saying what is wrong."""
    if (args.cert is None) != (args.key is None):
        raise CommandLineError("--cert and --key go together: give both or neither")
    try:
        return BrokerEndpoint.from_address(args.broker, ca=args.ca, cert=args.cert, key=args.key)
    except ValueError as exc:
        raise CommandLineError(f"--broker: {exc}") from None
