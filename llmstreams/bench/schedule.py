"""When each request of a run is due: arrival offsets for open loops and start offsets for the
workers of a closed loop, as plain numbers (seconds from the start of the run).

Kept apart from the load generator so that every schedule can be checked exactly, and the
generator can be driven by a fake clock in tests.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from pathlib import Path


def open_loop_arrivals(
    rate: float, *, burstiness: float = 1.0, ramp_up: float = 0.0, rng: random.Random
) -> Iterator[float]:
    """Endless arrival offsets of an open loop at `rate` requests/s on average.

    The gaps between arrivals are gamma-distributed with shape `burstiness` and mean 1/rate
    (as in vLLM's `bench serve`): 1 is a Poisson process, below 1 burstier, above 1 more
    even. With `ramp_up` seconds the rate rises linearly from 0 to `rate` over that time:
    arrivals are drawn as a unit-rate process and mapped through the inverse of the
    cumulative rate, so the ramp bends time without changing the process's shape.
    """
    shape = burstiness
    scale = 1.0 / shape
    expected = 0.0  # cumulative expected number of arrivals (the unit-rate process's clock)
    ramp_mass = rate * ramp_up / 2.0  # arrivals expected during the ramp
    while True:
        expected += rng.gammavariate(shape, scale)
        if expected < ramp_mass:
            yield math.sqrt(2.0 * ramp_up * expected / rate)
        else:
            yield ramp_up + (expected - ramp_mass) / rate


def closed_loop_starts(concurrency: int, ramp_up: float) -> list[float]:
    """When each of the `concurrency` workers of a closed loop sends its first request:
    spread evenly over `ramp_up` seconds (all at once without a ramp)."""
    if ramp_up <= 0:
        return [0.0] * concurrency
    return [ramp_up * worker / concurrency for worker in range(concurrency)]


class TraceError(ValueError):
    """A trace file that cannot be replayed."""


def read_trace(path: Path) -> tuple[float, ...]:
    """The arrival offsets of a trace: a JSONL file whose lines are objects with `offset_s`
    (seconds from the start of the run; `timestamp_ms`, milliseconds, is read too) or bare
    numbers of seconds. Blank lines are skipped; offsets are replayed in increasing order."""
    offsets: list[float] = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise TraceError(f"cannot read the trace {path}: {error.strerror or error}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        offsets.append(_offset(path, number, line))
    if not offsets:
        raise TraceError(f"the trace {path} has no arrivals")
    return tuple(sorted(offsets))


def _offset(path: Path, number: int, line: str) -> float:
    where = f"trace {path} line {number}"
    try:
        item = json.loads(line)
    except json.JSONDecodeError as error:
        raise TraceError(f"{where}: not valid JSON ({error.msg})") from None
    if isinstance(item, dict):
        if "offset_s" in item:
            value = item["offset_s"]
        elif "timestamp_ms" in item:
            value = item["timestamp_ms"] / 1000.0 if _is_number(item["timestamp_ms"]) else None
        else:
            raise TraceError(f'{where}: expected "offset_s" (seconds) or "timestamp_ms"')
    else:
        value = item
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise TraceError(f"{where}: an offset must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
