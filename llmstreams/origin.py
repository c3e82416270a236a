"""Where in the caller's code an object was made, for the warnings about objects left open."""

from __future__ import annotations

import sys
import warnings

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
