"""Reading (in Ray tasks): images as encoded bytes, from image files, WebDataset tar shards and Parquet shards.

One set of readers for detect and training: :func:`read_file` reads an image file, :func:`shard_samples`
the samples of a tar or Parquet shard, with the ids and metadata the shard carries. A failure is data, not
an exception: a file that cannot be read is ``(None, reason)``, and a shard that cannot be read (not a tar,
truncated, bad Parquet) ends in one error sample. Detect streams a unit's rows (:func:`read_unit`), marking
the unit's last row so the sink can tell when a unit is whole; training's read tasks
(:mod:`detbatch.training.data`) add each image's annotations.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import pyarrow as pa

from detbatch import storage
from detbatch.detect.units import IMAGE_EXTENSIONS, derived_image_id, image_id_for
from detbatch.errors import InputError

# The columns that name a row at every stage from here to the sink: its unit, its place in the unit
# (``last``: the unit's last row), and its image.
ROW_ID_FIELDS = [
    pa.field("unit", pa.int64()),
    pa.field("index", pa.int64()),
    pa.field("last", pa.bool_()),
    pa.field("uri", pa.string()),
    pa.field("image_id", pa.int64()),
]
# Rows of the read stage. Typed Arrow, so that a column of nulls stays a column of strings.
READ_SCHEMA = pa.schema([*ROW_ID_FIELDS, pa.field("data", pa.binary()), pa.field("error", pa.string())])

# Rows per batch that read_unit yields (and Parquet rows per read): small enough that a unit of large
# images never forms one huge block, large enough that per-batch overhead stays negligible.
ROWS_PER_READ_BATCH = 8

# The error of a tar sample that has members but no image (a label file alone, say).
NO_IMAGE_MEMBER = "no image member in the sample"


def read_file(uri: str) -> tuple[bytes | None, str | None]:
    """An image file's ``(bytes, None)``, or ``(None, reason)`` when it cannot be read."""
    try:
        return storage.read_bytes(uri), None
    except FileNotFoundError:
        return None, "file not found (deleted after listing?)"
    except storage.TransientStorageError:
        raise  # still failing after every retry: not a fact about the image; the task fails, a rerun retries
    except Exception as e:  # botocore/aiohttp raise many types; each is this image's failure, not the job's
        return None, f"read failed: {type(e).__name__}: {e}"


class TarSample(NamedTuple):
    """One WebDataset sample: the run of consecutive tar members that share a key."""

    key: str
    """The member path up to the first dot of its base name (``x/a`` for ``x/a.png``, ``x/a.json``)."""
    image_name: str | None
    """The image member's name (any image extension; the last wins); None when the sample has none."""
    image: bytes | None
    """The image member's bytes, as stored; None when the sample has none."""
    meta: dict[str, Any]
    """``KEY.json`` parsed (``file_name``, ``image_id``, ``annotations``, ...); ``{}`` when absent, not JSON
    or not a JSON object, so that one bad metadata file costs its sample its metadata, not the shard the rest."""


def tar_samples(shard: str) -> Iterator[TarSample]:
    """The samples of a WebDataset tar shard, in tar order, streamed (the shard is read once, front to back).

    Errors of the storage or of the tar itself (truncated, not a tar) propagate to the caller, after the
    samples read before them.
    """
    with storage.open_input(shard) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        key, members = None, []
        for member in tar:
            if not member.isfile():
                continue
            base = posixpath.basename(member.name)
            member_key = posixpath.join(posixpath.dirname(member.name), base.split(".", 1)[0])
            if member_key != key:
                if key is not None:
                    yield _tar_sample(key, members)
                key, members = member_key, []
            ext = "." + base.split(".", 1)[1].lower() if "." in base else ""
            members.append((ext, member.name, tar.extractfile(member).read()))
        if key is not None:
            yield _tar_sample(key, members)


def _tar_sample(key: str, members: list[tuple[str, str, bytes]]) -> TarSample:
    """``members``: ``(extension with its dot, lower-cased; member name; bytes)`` of one key."""
    image_name, image, meta = None, None, {}
    for ext, name, data in members:
        if ext in IMAGE_EXTENSIONS:
            image_name, image = name, data
        elif ext == ".json":
            try:
                meta = json.loads(data)
            except ValueError:  # not JSON, or not UTF-8
                meta = {}
    return TarSample(key, image_name, image, meta if isinstance(meta, dict) else {})


def parquet_samples(
    shard: str, columns: Sequence[str] = (), batch_size: int = ROWS_PER_READ_BATCH
) -> Iterator[tuple[Any, ...]]:
    """``(file_name, image bytes, image_id or None, *columns)`` per row of a Parquet shard, in file order.

    ``columns``: further columns to return (training's ``annotations``). The shard must hold ``file_name``,
    ``image`` and ``columns`` (else :class:`InputError`, naming the missing ones); ``image_id`` may be absent.
    Rows are read ``batch_size`` at a time; errors of the storage or of the file propagate to the caller.
    """
    import pyarrow.parquet as pq

    with storage.open_input(shard) as f:
        pf = pq.ParquetFile(f)
        names = set(pf.schema_arrow.names)
        missing = [c for c in ("file_name", "image", *columns) if c not in names]
        if missing:
            lacking = " and ".join(repr(c) for c in missing)
            raise InputError(f"columns {sorted(names)} lack {lacking} (see docs/data.md)")
        has_ids = "image_id" in names
        wanted = ["file_name", "image", *(["image_id"] if has_ids else []), *columns]
        for batch in pf.iter_batches(batch_size=batch_size, columns=wanted):
            table = batch.to_pydict()
            ids = table["image_id"] if has_ids else [None] * batch.num_rows
            yield from zip(table["file_name"], table["image"], ids, *(table[c] for c in columns))


class ShardSample(NamedTuple):
    """One sample of a tar or Parquet shard, as :func:`shard_samples` gives it (bytes, not pixels)."""

    uri: str
    """``SHARD#MEMBER`` (tar: the image member; ``SHARD#KEY.?`` for a sample without one), ``SHARD#FILE_NAME``
    (Parquet), or the shard itself in the error sample that ends an unreadable shard."""
    name: str
    """The image's file name: the tar metadata's ``file_name``, else the member name; Parquet ``file_name``."""
    image_id: int | None
    """The id the shard gives (tar metadata ``image_id``, Parquet ``image_id``), else None."""
    data: bytes | None
    """The encoded image as stored; None in an error sample (and for a null Parquet ``image``)."""
    error: str | None
    """:data:`NO_IMAGE_MEMBER`, ``shard unreadable: ...``, or None."""
    meta: dict[str, Any]
    """Tar: the sample's parsed ``KEY.json``; Parquet: the requested ``columns`` by name."""


def shard_samples(
    shard: str, kind: str, columns: Sequence[str] = (), batch_size: int = ROWS_PER_READ_BATCH
) -> Iterator[ShardSample]:
    """The samples of a ``kind`` (``tar`` or ``parquet``) shard, in shard order.

    A shard that cannot be read keeps the samples read before the failure and ends in one error sample
    whose ``uri`` is the shard. ``columns`` and ``batch_size``: Parquet only (see :func:`parquet_samples`).
    """
    try:
        if kind == "tar":
            for key, image_name, image, meta in tar_samples(shard):
                if image_name is None:
                    yield ShardSample(f"{shard}#{key}.?", key, _given_id(meta), None, NO_IMAGE_MEMBER, meta)
                else:
                    name = meta.get("file_name") or image_name
                    yield ShardSample(f"{shard}#{image_name}", name, _given_id(meta), image, None, meta)
        else:
            for name, data, image_id, *values in parquet_samples(shard, columns, batch_size):
                meta = dict(zip(columns, values)) if columns else {}
                yield ShardSample(f"{shard}#{name}", name, image_id, data, None, meta)
    except storage.TransientStorageError:
        # Storage kept failing mid-shard: the shard is not known to be bad, and what was read is not all of
        # it. Fail the task (Ray retries it; else the run stops and a rerun resumes) rather than record it.
        raise
    except Exception as e:
        yield ShardSample(shard, shard, None, None, f"shard unreadable: {type(e).__name__}: {e}", {})


def _given_id(meta: dict[str, Any]) -> int | None:
    """The metadata's ``image_id``; None when absent or not an integer, as for metadata that is not JSON."""
    try:
        return None if meta.get("image_id") is None else int(meta["image_id"])
    except (TypeError, ValueError):
        return None


def _rows(unit: int, items: Iterator[tuple[str, int, bytes | None, str | None]]) -> Iterator[dict[str, Any]]:
    """Number the items of a unit and mark its last row (known only once the next one is seen)."""
    pending = None
    for index, (uri, image_id, data, error) in enumerate(items):
        if pending is not None:
            yield pending
        pending = {"unit": unit, "index": index, "last": False, "uri": uri, "image_id": image_id, "data": data, "error": error}
    if pending is not None:
        pending["last"] = True
        yield pending


def _read_files(uris: list[str], image_ids: list[int]) -> Iterator[tuple[str, int, bytes | None, str | None]]:
    for uri, image_id in zip(uris, image_ids):
        yield uri, image_id, *read_file(uri)


def _read_shard(shard: str, kind: str, manifest: dict[str, int] | None) -> Iterator[tuple[str, int, bytes | None, str | None]]:
    """Detect's items of a shard; a tar sample without an image has nothing to detect and is left out,
    and a shard that holds no image is one error row, so that its unit completes."""
    empty = True
    for uri, name, given_id, data, error, _ in shard_samples(shard, kind):
        if error == NO_IMAGE_MEMBER:
            continue
        empty = False
        if error is not None:
            yield uri, derived_image_id(uri), None, error
        else:
            yield uri, image_id_for(uri, name, manifest, given_id), data, None
    if empty:
        yield shard, derived_image_id(shard), None, "shard holds no images"


def read_unit(
    unit: dict[str, Any], manifest: dict[str, int] | None, skip: list[tuple[int, int]]
) -> Iterator[dict[str, Any]]:
    """Stream the rows of one unit, leaving out indices in the half-open ``skip`` ranges."""
    if unit["kind"] == "images":
        items = _read_files(unit["uris"], unit["image_ids"])
    else:
        items = _read_shard(unit["uris"][0], unit["kind"], manifest)
    for row in _rows(unit["unit"], items):
        if not any(a <= row["index"] < b for a, b in skip):
            yield row
