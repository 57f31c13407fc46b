"""`python -m agent` is the same as the `fixture-agent` command."""

from agent.cli import main

if __name__ == "__main__":  # a spawned slot worker imports this module too: it must not run
    raise SystemExit(main())
