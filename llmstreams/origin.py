"""Where in the caller's code an object was made, for the warnings about objects left open;
and how a finalizer closes them."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import warnings
from collections.abc import Callable

_PACKAGE = __name__.partition(".")[0]

Origin = tuple[str, int]


def caller_origin() -> Origin:
    """File and line of the first frame outside llmstreams on the way up from here."""
    frame = sys._getframe(1)
    while frame.f_back is not None:
        module = frame.f_globals.get("__name__", "")
        if module != _PACKAGE and not module.startswith(_PACKAGE + "."):
            break
        frame = frame.f_back
    return frame.f_code.co_filename, frame.f_lineno


def warn_left_open(what: str, origin: Origin, advice: str, source: object) -> None:
    """One ResourceWarning: `what` (made at `origin`) was not closed; `advice` says how to."""
    filename, line = origin
    warnings.warn(
        f"{what} made at {filename}:{line} was not closed; {advice}",
        ResourceWarning,
        source=source,
        stacklevel=2,
    )


def call_from_finalizer(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
    """Run `callback`, which touches objects of `loop`, from a finalizer: at once where that is
    safe, else on the loop's own thread. The garbage collector runs finalizers in whichever
    thread allocates, and a running loop may only be used from its own."""
    try:
        here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    # A closed loop refuses the calls: what it ran cannot run again anyway.
    with contextlib.suppress(RuntimeError):
        if loop.is_running() and here is not loop:
            loop.call_soon_threadsafe(callback)
        else:
            callback()
