"""An index as input: a table of image URIs (Parquet, CSV or JSON lines) instead of a listing of files.

An index file has a ``uri`` column (an absolute URI or path, or a path relative to the index file's folder)
and an optional integer ``image_id`` (docs/data.md, "An index"). The driver lists only the index files and,
for planning, learns each one's row count (:func:`index_rows`: Parquet from its footer; CSV and JSON lines
by streaming the file once, in a Ray task per file when Ray is up); it never holds the rows. A unit is a row
range ``[start, stop)`` of one index file, which a read task reads (:func:`index_range`).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator, Sequence
from typing import Any

from detbatch import storage
from detbatch.errors import InputError

# Index file extensions -> how the file is read.
INDEX_EXTENSIONS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
INDEX_COLUMNS = "a 'uri' column (string: a URI, or a path relative to the index file) and optionally 'image_id' (integer)"
# Rows per batch when streaming CSV (pyarrow's block size sets the batch; this is bytes).
CSV_BLOCK_BYTES = 1 << 20


def index_format(uri: str) -> str:
    ext = posixpath.splitext(uri.split("?", 1)[0])[1].lower()
    if ext not in INDEX_EXTENSIONS:
        raise InputError(f"{uri}: not an index file (an index is {', '.join(INDEX_EXTENSIONS)})")
    return INDEX_EXTENSIONS[ext]


def is_index_schema(names: Sequence[str]) -> bool:
    """A table with a ``uri`` column and no ``image`` column is an index, not a Parquet shard of images."""
    return "uri" in names and "image" not in names


def parquet_columns(uri: str) -> list[str]:
    """The column names of a Parquet file, from its footer alone."""
    import pyarrow.parquet as pq

    with storage.open_input(uri) as f:
        return list(pq.ParquetFile(f).schema_arrow.names)


def _check_columns(uri: str, names: Sequence[str]) -> bool:
    """Whether the file has ``image_id``; :class:`InputError` naming the columns when it has no ``uri``."""
    if "uri" not in names:
        raise InputError(f"index {uri} has columns {sorted(names)} but no 'uri'; an index has {INDEX_COLUMNS} "
                         f"(see docs/data.md)")
    return "image_id" in names


def _csv_batches(uri: str) -> Iterator[Any]:
    import pyarrow.csv as pacsv

    with storage.open_input(uri) as f:
        reader = pacsv.open_csv(f, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                                convert_options=pacsv.ConvertOptions(column_types={"uri": "string"}))
        first = True
        for batch in reader:
            if first:
                _check_columns(uri, batch.schema.names)
                first = False
            yield batch
        if first:
            _check_columns(uri, reader.schema.names)


def _json_lines(uri: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, record) per non-blank line; a line that is not a JSON object is an InputError."""
    with storage.open_input(uri) as raw:
        import io

        row = 0
        for number, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8"), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise InputError(f"index {uri} line {number} is not JSON ({e}); write one JSON object a line") from None
            if not isinstance(record, dict):
                raise InputError(f"index {uri} line {number} is not a JSON object; write one object a line")
            if row == 0:
                _check_columns(uri, list(record))
            yield row, record
            row += 1


def index_rows(uri: str) -> int:
    """The row count of index file ``uri`` (Parquet: its footer; CSV and JSON lines: streamed once)."""
    kind = index_format(uri)
    if kind == "parquet":
        import pyarrow.parquet as pq

        with storage.open_input(uri) as f:
            pf = pq.ParquetFile(f)
            _check_columns(uri, pf.schema_arrow.names)
            return pf.metadata.num_rows
    if kind == "csv":
        return sum(batch.num_rows for batch in _csv_batches(uri))
    return sum(1 for _ in _json_lines(uri))


def index_row_counts(uris: Sequence[str]) -> list[int]:
    """:func:`index_rows` of every index file: one Ray task per file when Ray is up and there are several
    (reading a CSV to count it is the slow part), else here."""
    import ray

    if len(uris) > 1 and ray.is_initialized():
        count = ray.remote(num_cpus=0.25, max_retries=3)(index_rows)
        return ray.get([count.remote(u) for u in uris])
    return [index_rows(u) for u in uris]


def resolve_uri(index_uri: str, value: str) -> str:
    """An index value as a URI: absolute URIs and paths as they are, others relative to the index's folder."""
    if "://" in value or value.startswith("/"):
        return value
    return posixpath.join(posixpath.dirname(index_uri), value)


def parquet_rows(uri: str, start: int, stop: int, columns: Any = None) -> Iterator[Any]:
    """Rows ``[start, stop)`` of a Parquet file as Arrow tables, a row group at a time, reading only the
    row groups that hold them. ``columns``: a list, or a function of the file's column names that returns
    one (it may raise, naming what is missing)."""
    import pyarrow.parquet as pq

    with storage.open_input(uri) as f:
        pf = pq.ParquetFile(f)
        if callable(columns):
            columns = columns(pf.schema_arrow.names)
        first = 0
        for group in range(pf.metadata.num_row_groups):
            rows = pf.metadata.row_group(group).num_rows
            if first + rows > start and first < stop:
                lo, hi = max(start - first, 0), min(stop - first, rows)
                yield pf.read_row_group(group, columns=columns).slice(lo, hi - lo)
            first += rows
            if first >= stop:
                return


def _parquet_range(uri: str, start: int, stop: int) -> Iterator[tuple[Any, Any]]:
    """(uri, image_id) of rows ``[start, stop)``, reading only the row groups that hold them."""
    for table in parquet_rows(uri, start, stop, lambda names: ["uri", *(["image_id"] if _check_columns(uri, names) else [])]):
        ids = table.column("image_id").to_pylist() if "image_id" in table.column_names else [None] * table.num_rows
        yield from zip(table.column("uri").to_pylist(), ids)


def _csv_range(uri: str, start: int, stop: int) -> Iterator[tuple[Any, Any]]:
    row = 0
    for batch in _csv_batches(uri):
        if row + batch.num_rows > start:
            part = batch.slice(max(start - row, 0), stop - max(start, row))
            ids = part.column("image_id").to_pylist() if "image_id" in part.schema.names else [None] * part.num_rows
            yield from zip(part.column("uri").to_pylist(), ids)
        row += batch.num_rows
        if row >= stop:
            return


def _jsonl_range(uri: str, start: int, stop: int) -> Iterator[tuple[Any, Any]]:
    for row, record in _json_lines(uri):
        if row >= stop:
            return
        if row >= start:
            yield record.get("uri"), record.get("image_id")


def index_range(uri: str, start: int, stop: int) -> Iterator[tuple[Any, Any]]:
    """``(uri value, image_id value)`` of index rows ``[start, stop)``, as stored (None where absent).

    Parquet reads only the row groups holding the range; CSV and JSON lines stream from the file's start
    (split a large CSV or JSON-lines index into many files, or use Parquet: docs/data.md).
    """
    kind = index_format(uri)
    reader = {"parquet": _parquet_range, "csv": _csv_range, "jsonl": _jsonl_range}[kind]
    return reader(uri, start, stop)
