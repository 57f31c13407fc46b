"""The `fixture-agent` command line. Parsing and dispatch only; the work lives elsewhere.

Each area registers its own subcommands (``register(subparsers)``) so the command line grows
without one module knowing every feature.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from agent.commands.common import CommandLineError
from agent.errors import AgentError, ConfigError

Handler = Callable[[argparse.Namespace], int]

# Modules that contribute subcommands; each exposes register(subparsers) -> None.
COMMAND_MODULES = (
    "agent.commands.station",
    "agent.commands.schemas",
    "agent.commands.recorder",
    "agent.commands.demo",
    "agent.commands.sim",
    "agent.commands.plant",
    "agent.commands.factory_data",
)


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="fixture-agent", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # the area is not built yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script.

    Errors the agent raises on purpose (:class:`~agent.errors.AgentError`) reach the user as one
    sentence: exit 2 for an unusable configuration or command line, 1 for anything refused. A
    reader that goes away (``| head``) ends the command quietly. Only a bug shows a traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler: Handler = args.handler
    try:
        code = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader has gone; nothing more can reach it. Point stdout at /dev/null so the
        # interpreter's own final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # what a shell reports for a command ended by SIGPIPE
    except (ConfigError, CommandLineError) as exc:
        print(f"fixture-agent {args.command}: {exc}", file=sys.stderr)
        return 2
    except AgentError as exc:
        print(f"fixture-agent {args.command}: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
