"""Reading (in Ray tasks): images as encoded bytes, from image files, WebDataset tar shards and Parquet shards.

One set of readers for detect and training: :func:`read_file` reads an image file, :func:`shard_samples`
the samples of a tar or Parquet shard, with the ids and metadata the shard carries. A failure is data, not
an exception: a file that cannot be read (or is over ``input.max_bytes``) is ``(None, reason)``, a sample
that cannot be used is an error sample with the reason, and a shard that cannot be read (not a tar,
truncated, bad Parquet, a layout detbatch does not know) ends in one error sample. Detect streams a
unit's rows (:func:`read_unit`), marking the unit's last row so the sink can tell when a unit is whole;
training's read tasks (:mod:`detbatch.training.data`) add each image's annotations. The formats, and the
rules for tar keys and Parquet layouts: docs/data.md.
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

# The error of a tar sample that has members but no image (a label file alone, say); the members follow.
NO_IMAGE_MEMBER = "no image member in the sample"


def over_max_bytes(what: str, size: int, max_bytes: int | None) -> str | None:
    """The error of ``what`` (``file``, ``image member x.jpg``, ...) of ``size`` bytes when that is over
    ``max_bytes`` (``input.max_bytes``; None: no cap), else None."""
    if max_bytes is None or size <= max_bytes:
        return None
    return f"{what} of {size} bytes exceeds input.max_bytes={max_bytes}"


def read_file(uri: str, max_bytes: int | None = None, size: int | None = None) -> tuple[bytes | None, str | None]:
    """An image file's ``(bytes, None)``, or ``(None, reason)`` when it cannot be read.

    ``max_bytes``: a larger file is refused (``input.max_bytes``): before it is read when ``size`` (the
    listing's, which costs no request) says so, else once read, before anything decodes it.
    """
    if size is not None and (error := over_max_bytes("file", size, max_bytes)):
        return None, error
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        return None, "file not found (deleted after listing?)"
    except storage.TransientStorageError:
        raise  # still failing after every retry: not a fact about the image; the task fails, a rerun retries
    except Exception as e:  # botocore/aiohttp raise many types; each is this image's failure, not the job's
        return None, f"read failed: {type(e).__name__}: {e}"
    if error := over_max_bytes("file", len(data), max_bytes):  # it grew after the listing, or no size was given
        return None, error
    return data, None


class TarSample(NamedTuple):
    """One WebDataset sample: the run of consecutive tar members that share a key."""

    key: str
    """The member path up to the first dot of its base name (``x/a`` for ``x/a.png``, ``x/a.json``,
    ``x/a.seg.png``); the rest of the base name is the member's suffix (``png``, ``json``, ``seg.png``)."""
    image_name: str | None
    """The image member's name; None when the sample has none, or several and none plain (see
    :func:`tar_samples`)."""
    image: bytes | None
    """The image member's bytes, as stored; None when the sample has no usable image (``error`` says why)."""
    meta: dict[str, Any]
    """``KEY.json`` parsed (``file_name``, ``image_id``, ``annotations``, ...); ``{}`` when absent, not JSON
    or not a JSON object, so that one bad metadata file costs its sample its metadata, not the shard the rest."""
    error: str | None = None
    """Why the sample has no usable image (no image member, several, over ``max_bytes``, a repeated key)."""
    repeat: int = 0
    """Runs of the same key earlier in the shard (0: the first; more: an error sample, see :func:`tar_samples`)."""


class _Member(NamedTuple):
    name: str
    suffix: str
    """The base name after its first dot, lower-cased (``jpg``, ``0001.jpg``, ``json``)."""
    size: int
    data: bytes | None
    """Read only for the image and ``json`` members, and only within ``max_bytes``."""


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset's split of a member name: ``(key, suffix)`` at the first dot of the base name."""
    folder, base = posixpath.split(name)
    stem, _, suffix = base.partition(".")
    return posixpath.join(folder, stem), suffix.lower()


def _is_image(suffix: str) -> bool:
    """An image member is one whose *last* extension is an image's (``jpg``, ``0001.jpg``, ``seg.png``)."""
    return "." + suffix.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS


def tar_samples(shard: str, max_bytes: int | None = None) -> Iterator[TarSample]:
    """The samples of a WebDataset tar shard, in tar order, streamed (the shard is read once, front to back).

    WebDataset's rules: a sample is a run of consecutive members with one key (:class:`TarSample`). Its
    image is the member whose suffix is an image extension (``KEY.jpg``), else the one member whose last
    extension is (``KEY.0001.jpg``); none, several, or one over ``max_bytes`` (read from its tar header,
    so it is never read) make an error sample. A key that reappears after other keys is an error sample
    (``repeat`` > 0), not a second image under the first one's name. Only the image and ``json`` members
    are read. Errors of the storage or of the tar itself (truncated, not a tar) propagate to the caller,
    after the samples read before them.
    """
    with storage.open_input(shard) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        key, members, runs = None, [], {}
        for member in tar:
            if not member.isfile():
                continue
            member_key, suffix = _split_name(member.name)
            if member_key != key:
                if key is not None:
                    yield _tar_sample(key, members, runs[key] - 1, max_bytes)
                key, members = member_key, []
                runs[key] = runs.get(key, 0) + 1
            wanted = runs[key] == 1 and (suffix == "json" or _is_image(suffix))
            within = max_bytes is None or member.size <= max_bytes  # the header's size: refused unread
            data = tar.extractfile(member).read() if wanted and within else None
            members.append(_Member(member.name, suffix, member.size, data))
        if key is not None:
            yield _tar_sample(key, members, runs[key] - 1, max_bytes)


def _tar_sample(key: str, members: list[_Member], repeat: int, max_bytes: int | None) -> TarSample:
    names = ", ".join(m.name for m in members)
    if repeat:
        return TarSample(key, None, None, {}, f"key {key!r} repeats after other keys ({names}); a sample's "
                                               f"members must be consecutive, and keys unique in a shard", repeat)
    meta, error = {}, None
    for m in members:
        if m.suffix != "json":
            continue
        if m.data is None:
            error = over_max_bytes(f"metadata member {m.name}", m.size, max_bytes)
        else:
            try:
                meta = json.loads(m.data)
            except ValueError:  # not JSON, or not UTF-8
                meta = {}
    meta = meta if isinstance(meta, dict) else {}
    images = [m for m in members if _is_image(m.suffix)]
    plain = [m for m in images if "." not in m.suffix]  # KEY.jpg beats KEY.seg.png, a field beside the image
    chosen = plain or images
    if not images:
        return TarSample(key, None, None, meta, f"{NO_IMAGE_MEMBER} ({names})")
    if len(chosen) > 1:
        return TarSample(key, None, None, meta, f"several image members ({', '.join(m.name for m in chosen)}); "
                                                f"a sample holds one image")
    image = chosen[0]
    error = over_max_bytes(f"image member {image.name}", image.size, max_bytes) or error
    return TarSample(key, image.name, None if error else image.data, meta, error)


# The Parquet layouts detbatch reads (docs/data.md): the one ``prepare`` writes, and Hugging Face
# datasets' ``image`` struct, whose ``path`` names the image when there is no ``file_name`` column.
PARQUET_LAYOUTS = ("file_name (string) and image (binary), or image as a struct {bytes: binary, path: string} "
                   "(Hugging Face datasets; path is the file name when there is no file_name column); "
                   "image_id (integer) optional")


def _parquet_layout(schema: pa.Schema, columns: Sequence[str]) -> tuple[bool, bool]:
    """``(image is a struct, file_name column present)``, or :class:`InputError` naming the columns found
    and the expected ones."""
    names = set(schema.names)
    image = schema.field("image").type if "image" in names else None
    is_struct = image is not None and pa.types.is_struct(image)
    fields = {image.field(i).name: image.field(i).type for i in range(image.num_fields)} if is_struct else {}
    fits = [
        image is not None and (_is_binary(image) or ("bytes" in fields and _is_binary(fields["bytes"]))),
        "file_name" in names or ("path" in fields and _is_string(fields["path"])),
        "file_name" not in names or _is_string(schema.field("file_name").type),
        "path" not in fields or _is_string(fields["path"]),
        "image_id" not in names or pa.types.is_integer(schema.field("image_id").type),
    ]
    if not all(fits):
        found = ", ".join(f"{f.name}: {f.type}" for f in schema)
        raise InputError(f"columns {{{found}}} are not a shard layout; expected {PARQUET_LAYOUTS} (see docs/data.md)")
    missing = [c for c in columns if c not in names]
    if missing:
        lacking = " and ".join(repr(c) for c in missing)
        raise InputError(f"columns {sorted(names)} lack {lacking} (see docs/data.md)")
    return is_struct, "file_name" in names


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def parquet_samples(
    shard: str, columns: Sequence[str] = (), batch_size: int = ROWS_PER_READ_BATCH
) -> Iterator[tuple[Any, ...]]:
    """``(file_name, image bytes, image_id or None, *columns)`` per row of a Parquet shard, in file order.

    The shard is in one of :data:`PARQUET_LAYOUTS` and holds ``columns`` (further columns to return:
    training's ``annotations``), else :class:`InputError`. A row without a name (a null ``file_name`` or
    ``path``) is named ``row-N``, N its 0-based row in the file. Rows are read ``batch_size`` at a time;
    errors of the storage or of the file propagate to the caller.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    with storage.open_input(shard) as f:
        pf = pq.ParquetFile(f)
        is_struct, has_names = _parquet_layout(pf.schema_arrow, columns)
        has_ids = "image_id" in pf.schema_arrow.names
        wanted = [*(["file_name"] if has_names else []), "image", *(["image_id"] if has_ids else []), *columns]
        row = 0
        for batch in pf.iter_batches(batch_size=batch_size, columns=wanted):
            image = batch.column("image")
            data = pc.struct_field(image, "bytes") if is_struct else image
            names = batch.column("file_name") if has_names else pc.struct_field(image, "path")
            ids = batch.column("image_id").to_pylist() if has_ids else [None] * batch.num_rows
            named = [n if n is not None else f"row-{row + i}" for i, n in enumerate(names.to_pylist())]
            yield from zip(named, data.to_pylist(), ids, *(batch.column(c).to_pylist() for c in columns))
            row += batch.num_rows


class ShardSample(NamedTuple):
    """One sample of a tar or Parquet shard, as :func:`shard_samples` gives it (bytes, not pixels)."""

    uri: str
    """``SHARD#MEMBER`` (tar: the image member; ``SHARD#KEY.?`` for a sample without one image, ``SHARD#KEY@N``
    for the Nth repeat of a key), ``SHARD#FILE_NAME`` (Parquet), or the shard itself in the error sample
    that ends an unreadable shard."""
    name: str
    """The image's file name: the tar metadata's ``file_name``, else the member name; Parquet ``file_name``."""
    image_id: int | None
    """The id the shard gives (tar metadata ``image_id``, Parquet ``image_id``), else None."""
    data: bytes | None
    """The encoded image as stored; None in an error sample (and for a null Parquet ``image``)."""
    error: str | None
    """Why the sample has no image (:class:`TarSample` ``error``, over ``max_bytes``), ``shard unreadable:
    ...``, or None."""
    meta: dict[str, Any]
    """Tar: the sample's parsed ``KEY.json``; Parquet: the requested ``columns`` by name."""


def shard_samples(
    shard: str, kind: str, columns: Sequence[str] = (), batch_size: int = ROWS_PER_READ_BATCH,
    max_bytes: int | None = None,
) -> Iterator[ShardSample]:
    """The samples of a ``kind`` (``tar`` or ``parquet``) shard, in shard order: the same shard gives the
    same samples in the same order, error samples included.

    A shard that cannot be read keeps the samples read before the failure and ends in one error sample
    whose ``uri`` is the shard. ``columns`` and ``batch_size``: Parquet only (see :func:`parquet_samples`);
    ``max_bytes``: an image larger than that is an error sample (``input.max_bytes``; None: no cap).
    """
    try:
        if kind == "tar":
            for s in tar_samples(shard, max_bytes):
                if s.repeat:
                    yield ShardSample(f"{shard}#{s.key}@{s.repeat}", f"{s.key}@{s.repeat}", None, None, s.error, {})
                else:
                    member = s.image_name or f"{s.key}.?"
                    name = s.meta.get("file_name") or s.image_name or s.key
                    yield ShardSample(f"{shard}#{member}", name, _given_id(s.meta), s.image, s.error, s.meta)
        else:
            for name, data, image_id, *values in parquet_samples(shard, columns, batch_size):
                meta = dict(zip(columns, values)) if columns else {}
                error = None if data is None else over_max_bytes("image", len(data), max_bytes)
                yield ShardSample(f"{shard}#{name}", name, image_id, None if error else data, error, meta)
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


def _read_files(
    uris: list[str], image_ids: list[int], sizes: list[int | None], max_bytes: int | None
) -> Iterator[tuple[str, int, bytes | None, str | None]]:
    for uri, image_id, size in zip(uris, image_ids, sizes):
        yield uri, image_id, *read_file(uri, max_bytes, size)


def _read_listed(
    part: str, start: int, stop: int, max_bytes: int | None
) -> Iterator[tuple[str, int, bytes | None, str | None]]:
    """Detect's items of a unit of image files in a listing part: rows ``[start, stop)`` of ``part`` (the
    row groups that hold them: :mod:`detbatch.detect.listing`), each file read."""
    from detbatch.detect.index import parquet_rows

    for table in parquet_rows(part, start, stop, ["uri", "image_id", "size"]):
        rows = table.to_pydict()
        for uri, image_id, size in zip(rows["uri"], rows["image_id"], rows["size"]):
            yield uri, image_id, *read_file(uri, max_bytes, None if size < 0 else size)


def _read_shard(
    shard: str, kind: str, manifest: dict[str, int] | None, max_bytes: int | None
) -> Iterator[tuple[str, int, bytes | None, str | None]]:
    """Detect's items of a shard: one per sample, error samples included, so that the images table
    accounts for every sample; a shard without a single sample is one error row, so that its unit completes."""
    empty = True
    for uri, name, given_id, data, error, _ in shard_samples(shard, kind, max_bytes=max_bytes):
        empty = False
        yield uri, image_id_for(uri, name, manifest, given_id), data, error
    if empty:
        yield shard, derived_image_id(shard), None, "shard holds no images"


def _read_index(
    index: str, start: int, stop: int, max_bytes: int | None
) -> Iterator[tuple[str, int, bytes | None, str | None]]:
    """Detect's items of an index unit: rows ``[start, stop)`` of ``index``, each image file read. A row
    without a uri, or whose image_id is not an integer, is an error row (named ``INDEX#row-N``)."""
    from detbatch.detect.index import index_range, resolve_uri

    for row, (value, given) in enumerate(index_range(index, start, stop), start):
        if not isinstance(value, str) or not value:
            name = f"{index}#row-{row}"
            yield name, derived_image_id(name), None, f"index row {row} has no uri"
            continue
        uri = resolve_uri(index, value)
        try:
            image_id = image_id_for(uri, uri, None, given)
        except (TypeError, ValueError):
            yield uri, derived_image_id(uri), None, f"index row {row}: image_id {given!r} is not an integer"
            continue
        yield uri, image_id, *read_file(uri, max_bytes)


def read_unit(
    unit: dict[str, Any], manifest: dict[str, int] | None, skip: list[tuple[int, int]], max_bytes: int | None = None
) -> Iterator[dict[str, Any]]:
    """Stream the rows of one unit, leaving out indices in the half-open ``skip`` ranges.

    ``unit``: a row of :func:`~detbatch.detect.units.plan_units`, with optional ``sizes`` (of its image
    files, from the listing; None or negative: unknown); an index unit reads rows ``start``..``stop`` of
    its index file and then each image they name; a unit of image files with ``start`` ≥ 0 reads those
    rows of its listing part (``uris[0]``, :mod:`detbatch.detect.plan`) and then each file.
    ``max_bytes``: ``input.max_bytes`` (None: no cap).
    """
    if unit["kind"] == "images" and unit.get("start", -1) >= 0:
        items = _read_listed(unit["uris"][0], int(unit["start"]), int(unit["stop"]), max_bytes)
    elif unit["kind"] == "images":
        listed = unit.get("sizes")
        sizes = [None] * len(unit["uris"]) if listed is None else [None if s < 0 else int(s) for s in listed]
        items = _read_files(unit["uris"], unit["image_ids"], sizes, max_bytes)
    elif unit["kind"] == "index":
        items = _read_index(unit["uris"][0], int(unit["start"]), int(unit["stop"]), max_bytes)
    else:
        items = _read_shard(unit["uris"][0], unit["kind"], manifest, max_bytes)
    for row in _rows(unit["unit"], items):
        if not any(a <= row["index"] < b for a, b in skip):
            yield row
