"""Reading units (in Ray tasks): a unit's images as encoded bytes, one row per image.

Readers for image files, WebDataset tar shards and Parquet shards; detect streams them per unit
(:func:`read_unit`), marking the unit's last row so the sink can tell when a unit is whole, and training
reads the same samples (:func:`tar_samples`, :func:`parquet_samples`).
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from typing import Any, Iterator

import pyarrow as pa

from detbatch import storage
from detbatch.detect.units import IMAGE_EXTENSIONS, derived_image_id, image_id_for
from detbatch.errors import InputError

# Rows of the read stage. Typed Arrow, so that a column of nulls stays a column of strings.
READ_SCHEMA = pa.schema(
    [
        ("unit", pa.int64()),
        ("index", pa.int64()),
        ("last", pa.bool_()),
        ("uri", pa.string()),
        ("image_id", pa.int64()),
        ("data", pa.binary()),
        ("error", pa.string()),
    ]
)

# Rows per batch that read_unit yields: small enough that a unit of large images never forms one huge
# block, large enough that per-batch overhead stays negligible.
ROWS_PER_READ_BATCH = 8


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
        try:
            yield uri, image_id, storage.read_bytes(uri), None
        except FileNotFoundError:
            yield uri, image_id, None, "file not found (deleted after listing?)"
        except Exception as e:
            yield uri, image_id, None, f"read failed: {type(e).__name__}: {e}"


def tar_samples(shard: str) -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """WebDataset grouping: ``(key, [(extension, member name, bytes), ...])`` per sample, in tar order.

    A sample is the run of consecutive file members sharing a key (the member path up to the first dot
    of its base name); the extension is lower-cased, with its dot (``.jpg``, ``.json``). Errors of the
    storage or of the tar itself propagate to the caller.
    """
    fs, path = storage.resolve(shard)
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        key, members = None, []
        for member in tar:
            if not member.isfile():
                continue
            base = posixpath.basename(member.name)
            member_key = posixpath.join(posixpath.dirname(member.name), base.split(".", 1)[0])
            ext = "." + base.split(".", 1)[1].lower() if "." in base else ""
            if member_key != key:
                if key is not None:
                    yield key, members
                key, members = member_key, []
            members.append((ext, member.name, tar.extractfile(member).read()))
        if key is not None:
            yield key, members


def sample_parts(members: list[tuple[str, str, bytes]]) -> tuple[tuple[str, bytes] | None, bytes | None]:
    """A :func:`tar_samples` sample's ``(member name, bytes)`` of its image (any image extension; the
    last wins) and the bytes of its ``KEY.json``, each None when absent."""
    image, meta = None, None
    for ext, name, data in members:
        if ext in IMAGE_EXTENSIONS:
            image = (name, data)
        elif ext == ".json":
            meta = data
    return image, meta


def _read_tar(shard: str, root: str, manifest: dict[str, int] | None) -> Iterator[tuple[str, int, bytes | None, str | None]]:
    """WebDataset samples: members sharing a key; the image member is any image extension,
    an optional ``KEY.json`` may give ``image_id`` and ``file_name``."""
    try:
        for _, members in tar_samples(shard):
            image, meta_json = sample_parts(members)
            if image is None:
                continue
            try:
                meta = json.loads(meta_json) if meta_json is not None else None
            except json.JSONDecodeError:
                meta = None
            uri = f"{shard}#{image[0]}"
            name = (meta or {}).get("file_name") or image[0]
            yield uri, image_id_for(uri, name, manifest, (meta or {}).get("image_id")), image[1], None
    except Exception as e:
        # A truncated or corrupt shard: what was read so far stands, the rest is one error row.
        yield shard, derived_image_id(shard), None, f"shard unreadable: {type(e).__name__}: {e}"


def _read_parquet(shard: str, manifest: dict[str, int] | None) -> Iterator[tuple[str, int, bytes | None, str | None]]:
    import pyarrow.parquet as pq

    try:
        fs, path = storage.resolve(shard)
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            names = set(pf.schema_arrow.names)
            if not {"file_name", "image"} <= names:
                raise InputError(f"columns {sorted(names)} lack 'file_name' and 'image' (see docs/data.md)")
            columns = ["file_name", "image"] + (["image_id"] if "image_id" in names else [])
            for batch in pf.iter_batches(batch_size=ROWS_PER_READ_BATCH, columns=columns):
                table = batch.to_pydict()
                ids = table.get("image_id") or [None] * batch.num_rows
                for name, data, given in zip(table["file_name"], table["image"], ids):
                    uri = f"{shard}#{name}"
                    yield uri, image_id_for(uri, name, manifest, given), data, None
    except Exception as e:
        yield shard, derived_image_id(shard), None, f"shard unreadable: {type(e).__name__}: {e}"


def read_unit(
    unit: dict[str, Any], root: str, manifest: dict[str, int] | None, skip: list[tuple[int, int]]
) -> Iterator[dict[str, Any]]:
    """Stream the rows of one unit, leaving out indices in the half-open ``skip`` ranges."""
    if unit["kind"] == "images":
        items = _read_files(unit["uris"], unit["image_ids"])
    elif unit["kind"] == "tar":
        items = _nonempty(unit["uris"][0], _read_tar(unit["uris"][0], root, manifest))
    else:
        items = _nonempty(unit["uris"][0], _read_parquet(unit["uris"][0], manifest))
    for row in _rows(unit["unit"], items):
        if not any(a <= row["index"] < b for a, b in skip):
            yield row


def _nonempty(shard: str, items: Iterator[tuple[str, int, bytes | None, str | None]]):
    """A shard that holds no image is recorded as one error row, so that its unit completes."""
    empty = True
    for item in items:
        empty = False
        yield item
    if empty:
        yield shard, derived_image_id(shard), None, "shard holds no images"
