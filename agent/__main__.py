"""`python -m agent` is the same as the `fixture-agent` command."""

from agent.cli import main

raise SystemExit(main())
