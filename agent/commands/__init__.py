"""Subcommands of the `fixture-agent` command line, one module per area."""
