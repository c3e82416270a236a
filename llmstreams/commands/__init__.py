"""Subcommands of the `llmstreams` command line, one module each."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def library_log_level(level: int) -> Iterator[None]:
    """Set the `llmstreams` logger's level for the duration of a command, then restore it."""
    logger = logging.getLogger("llmstreams")
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)
