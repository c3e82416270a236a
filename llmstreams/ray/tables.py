"""Parquet input and output for `llmstreams batch --ray`.

Parquet output is a directory of part files (as Ray Data and Spark write it), with the columns
of `RESULT_COLUMNS`. A part is written whole (to a temporary name, then renamed) every
`PART_ROWS` results and at the end, so a killed run leaves only whole parts (and perhaps a
temporary one, which the next run moves aside); the results not yet in a part run again on
resume. An OUTPUT that holds anything else is refused, unless `overwrite`.
"""

from __future__ import annotations

import itertools
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.parquet

from llmstreams.batch import (
    BatchRequest,
    ForeignOutputError,
    IdKey,
    InputProblem,
    Mode,
    PreviousResults,
    id_key,
    parse_item,
    partial_path,
    setup_error,
)
from llmstreams.ray.generate import RESULT_COLUMNS, columns_of, result_table, without_nulls

PART_ROWS = 1000
_TEMPORARY_SUFFIX = ".tmp"
# The name `_write_part` gives a part while it is being written.
_TEMPORARY_PART = re.compile(r"part-[0-9a-f]{32}\.parquet" + re.escape(_TEMPORARY_SUFFIX))


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() == ".parquet"


def read_parquet_requests(path: Path) -> Iterator[BatchRequest | InputProblem]:
    """The request of each row of a Parquet file (its row number from 1 as its line)."""
    source = pyarrow.parquet.ParquetFile(path)
    numbers = itertools.count(1)
    for batch in source.iter_batches():
        for row in batch.to_pylist():
            yield parse_item(next(numbers), without_nulls(row))


def _is_listed(entry: Path) -> bool:
    """Whether Parquet readers take `entry` of a dataset directory as data (not "_" or ".")."""
    return not entry.name.startswith(("_", "."))


def _is_result_part(path: Path) -> bool:
    """Whether `path` is a Parquet file with every result column."""
    try:
        names = set(pyarrow.parquet.read_schema(path).names)
    except (OSError, pyarrow.ArrowException):
        return False
    return names.issuperset(RESULT_COLUMNS)


def check_parts(directory: Path) -> tuple[list[Path], list[Path]]:
    """The result parts and the leftover temporary parts of the Parquet OUTPUT `directory`.

    It is the output of an earlier run when it is a directory whose `.parquet` files all have
    the result columns, and which holds at least one of them or of our temporary parts, or
    nothing Parquet readers would list (names starting "_" or "." aside). Anything else
    raises `ForeignOutputError`.
    """
    if not directory.is_dir():
        raise ForeignOutputError(directory, "is a file, and Parquet output is a directory of parts")
    entries = sorted(entry for entry in directory.iterdir() if _is_listed(entry))
    parts = [entry for entry in entries if entry.suffix == ".parquet"]
    for part in parts:
        if not (part.is_file() and _is_result_part(part)):
            raise ForeignOutputError(
                directory, f"holds {part.name}, which is not a Parquet file of llmstreams results"
            )
    leftovers = [entry for entry in entries if _TEMPORARY_PART.fullmatch(entry.name)]
    if entries and not parts and not leftovers:
        raise ForeignOutputError(directory, "holds no llmstreams result parts")
    return parts, leftovers


def _discard(directory: Path) -> None:
    """Empty the Parquet OUTPUT `directory` of its `.parquet` files, for `overwrite` (a file in
    its place is removed, the directory made); other files and directories are left."""
    if directory.exists() and not directory.is_dir():
        directory.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    for entry in directory.iterdir():
        if _is_listed(entry) and not entry.is_dir() and (
            entry.suffix == ".parquet" or _TEMPORARY_PART.fullmatch(entry.name)
        ):
            entry.unlink()


def _move_leftovers_aside(directory: Path, leftovers: list[Path]) -> tuple[int, Path | None]:
    """Move the temporary parts an interrupted run left into `partial_path(directory)`; their
    bytes and where they went."""
    if not leftovers:
        return 0, None
    sidecar = partial_path(directory)
    sidecar.mkdir(exist_ok=True)
    size = 0
    for leftover in leftovers:
        size += leftover.stat().st_size
        os.replace(leftover, sidecar / leftover.name)
    return size, sidecar


def load_previous_parts(directory: Path, mode: Mode) -> PreviousResults:
    """`load_previous` for a Parquet output directory, with the same rules: `overwrite` empties
    it of parts; otherwise it must be the output of an earlier run (`check_parts`), and the
    temporary parts an interrupted run left are moved aside (`partial_path`). `retry_errors`
    drops every error row, any other run drops the rows of setup errors (the kept rows are then
    rewritten as one new part)."""
    if mode == "overwrite" or not directory.exists():
        _discard(directory)
        return PreviousResults({}, [])
    parts, leftovers = check_parts(directory)
    moved_bytes, moved_to = _move_leftovers_aside(directory, leftovers)
    done: dict[IdKey, bool] = {}
    kept: list[pyarrow.Table] = []
    dropped = setup_errors = 0
    for part in parts:
        table = pyarrow.parquet.read_table(part)
        keep = []
        for row in table.select(["id", "error_type", "error_code", "error_field"]).to_pylist():
            error = {
                name: row[f"error_{name}"] for name in ("type", "code", "field")
                if row[f"error_{name}"] is not None
            }
            drop = bool(error) and (mode == "retry_errors" or setup_error(error) is not None)
            dropped += drop
            setup_errors += drop and mode != "retry_errors"
            keep.append(not drop)
            key = id_key(row["id"])
            if key is not None and not drop:
                done[key] = not error
        kept.append(table.filter(pyarrow.array(keep, type=pyarrow.bool_())))
    if dropped:
        _write_part(directory, pyarrow.concat_tables(kept))
        for part in parts:
            part.unlink()
    return PreviousResults(done, [], moved_bytes, moved_to, setup_errors)


def _write_part(directory: Path, table: pyarrow.Table) -> None:
    name = f"part-{uuid.uuid4().hex}.parquet"
    temporary = directory / (name + _TEMPORARY_SUFFIX)
    pyarrow.parquet.write_table(table, temporary)
    os.replace(temporary, directory / name)


class PartWriter:
    """Result records into the Parquet parts of `directory`; see the module docstring."""

    def __init__(self, directory: Path, part_rows: int = PART_ROWS) -> None:
        self.directory = directory
        self.part_rows = part_rows
        self._rows: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        return f"<PartWriter {str(self.directory)!r} waiting_rows={len(self._rows)}>"

    def write(self, record: Mapping[str, Any]) -> None:
        self._rows.append(columns_of(record))
        if len(self._rows) >= self.part_rows:
            self.flush()

    def flush(self) -> None:
        if self._rows:
            _write_part(self.directory, result_table(self._rows))
            self._rows = []

    def close(self) -> None:
        self.flush()
