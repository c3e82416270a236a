"""Subcommands of the `llmstreams` command line, one module each."""
