"""Parquet input and output for `llmstreams batch --ray`.

Parquet output is a directory of part files (as Ray Data and Spark write it), with the columns
of `RESULT_COLUMNS`. A part is written whole (to a temporary name, then renamed) every
`PART_ROWS` results and at the end, so a killed run leaves only whole parts; the results not
yet in a part run again on resume.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.parquet

from llmstreams.batch import (
    BatchRequest,
    IdKey,
    InputProblem,
    Mode,
    PreviousResults,
    id_key,
    parse_item,
    setup_error,
)
from llmstreams.ray.generate import columns_of, result_table, without_nulls

PART_ROWS = 1000
_TEMPORARY_SUFFIX = ".tmp"


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() == ".parquet"


def read_parquet_requests(path: Path) -> Iterator[BatchRequest | InputProblem]:
    """The request of each row of a Parquet file (its row number from 1 as its line)."""
    source = pyarrow.parquet.ParquetFile(path)
    numbers = itertools.count(1)
    for batch in source.iter_batches():
        for row in batch.to_pylist():
            yield parse_item(next(numbers), without_nulls(row))


def _parts(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.parquet")) if directory.is_dir() else []


def load_previous_parts(directory: Path, mode: Mode) -> PreviousResults:
    """`load_previous` for a Parquet output directory, with the same rules: `overwrite` empties
    it, `retry_errors` drops every error row, any other run drops the rows of setup errors (the
    kept rows are then rewritten as one new part)."""
    directory.mkdir(parents=True, exist_ok=True)
    for leftover in directory.glob(f"*{_TEMPORARY_SUFFIX}"):
        leftover.unlink()
    parts = _parts(directory)
    if mode == "overwrite":
        for part in parts:
            part.unlink()
        return PreviousResults({}, [])
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
    return PreviousResults(done, [], setup_errors=setup_errors)


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
