"""The `llmstreams` command line: one subcommand per module under `llmstreams.commands`."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from llmstreams import __version__, telemetry

# Each name is a module `llmstreams.commands.<name>` exposing
# `register(subparsers) -> None`; the registered parser sets `func(args) -> int`.
SUBCOMMANDS: tuple[str, ...] = ("chat", "mock", "bench", "demo", "batch")
# The commands that send generations, and so set up OpenTelemetry from OTEL_* variables.
TRACED_COMMANDS: frozenset[str] = frozenset({"chat", "bench", "batch"})


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
    in_main_thread = threading.current_thread() is threading.main_thread()
    ctrl_c = signal.getsignal(signal.SIGINT) if in_main_thread else None
    send_telemetry = (
        telemetry.configure_from_environment() if args.command in TRACED_COMMANDS else None
    )
    try:
        return int(args.func(args))
    finally:
        if send_telemetry is not None:
            send_telemetry()
        # A command may ignore Ctrl-C once its work is done, up to the process's exit; a
        # caller that passed `argv` (a program, a test) gets its own handler back.
        if argv is not None and in_main_thread:
            signal.signal(signal.SIGINT, ctrl_c)


if __name__ == "__main__":
    sys.exit(main())
