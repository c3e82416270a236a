"""The `llmstreams` command line: one subcommand per module under `llmstreams.commands`."""

from __future__ import annotations

import argparse
import difflib
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


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line's arguments. An option a subcommand does not know is refused by that
    subcommand, with its own usage and the option it most likely meant, before anything runs
    (so that a mistyped flag's value is never taken for the prompt)."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        subparser = _subparsers(parser).get(getattr(args, "command", None) or "", parser)
        flags = [flag for action in subparser._actions for flag in action.option_strings]
        first = next((word for word in unknown if word.startswith("-")), unknown[0])
        close = difflib.get_close_matches(first.split("=", 1)[0], flags, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        subparser.error(f"unrecognized argument {first}{hint}")
    return args


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
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
