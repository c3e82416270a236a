"""The `llmstreams` command line: one subcommand per module under `llmstreams.commands`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from llmstreams import __version__

# Each name is a module `llmstreams.commands.<name>` exposing
# `register(subparsers) -> None`; the registered parser sets `func(args) -> int`.
SUBCOMMANDS: tuple[str, ...] = ("chat", "mock", "bench", "demo", "batch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmstreams",
        description="Stream text generation from Baidu Qianfan, Alibaba DashScope and any "
        "OpenAI-compatible server.",
    )
    parser.add_argument("--version", action="version", version=f"llmstreams {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"llmstreams.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="llmstreams: %(levelname)s: %(message)s", level=logging.WARNING)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
