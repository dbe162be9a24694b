"""Finding every input file under a folder/prefix, in Ray tasks over its sub-prefixes, and, for image
files, writing the listing into the output as sorted Parquet *parts* that the driver never holds.

A sequential ``fs.find`` of an S3 prefix is one request per 1,000 keys, one after the other: hours at
100M keys, and ~240 B of driver memory per file. Here the prefix is listed with a delimiter first (its
files and its sub-prefixes) in a task (:func:`list_level`), and every sub-prefix in a task of its own;
a sub-prefix below :data:`SPLIT_DEPTH` levels is listed whole, with ``find``, by one task. Each task
sorts what it found and hands back its *segments* in order: runs of image files (written as parts by
the task when long, handed back when short), and its sub-prefixes, each at its place in the order.

**The order.** Keys sort as strings, and every key under ``p/`` falls between the keys that sort before
and after ``p/``: so the files of a level and its sub-prefixes, sorted by name (a sub-prefix as
``name/``), with each sub-prefix replaced by its own sorted listing, are exactly ``sorted(fs.find())``.
:func:`walk` reads the segments in that order, gathers the short runs into parts of its own, and so the
parts, one after the other, hold the input in the same order however the listing was split.

**The digests** of a listing (:func:`detbatch.detect.units.names_sum`) are sums of a hash per file,
which tasks add up over what they found: the same for any split, and no file crosses to the driver.

Shards and index files are few (one per thousands of images); tasks hand them back to the driver, which
plans them as before (:mod:`detbatch.detect.units`).
"""

from __future__ import annotations

import io
import logging
import posixpath
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from detbatch import storage
from detbatch.detect.index import INDEX_EXTENSIONS
from detbatch.detect.units import IMAGE_EXTENSIONS, file_version, image_id_for, listing_call, names_sum
from detbatch.metrics.pairing import SHARD_EXTENSIONS, relative_name

logger = logging.getLogger(__name__)

# Levels of sub-prefixes split into tasks of their own. Datasets are laid out a few levels deep
# (split/shard/ or yyyy/mm/dd/); past that a sub-tree is listed by one task with find.
SPLIT_DEPTH = 3
# Image files per listing part (the driver gathers short runs into parts of this size: ~50 MB of rows
# at most), written in row groups of PART_ROW_GROUP files, so that a task of the stream that cuts a range
# of a part into units (detbatch.detect.stream._units_stage) reads only that range's row groups.
PART_ROWS = 1 << 17
PART_ROW_GROUP = 4096
# A run of fewer image files than this goes back to the driver, which gathers such runs into parts of its
# own; a longer run is written by its task. Folders of a few files each (one per video, say) then still
# make parts of PART_ROWS, and units that span folders, and the driver holds at most a part's worth.
INLINE_MAX = 4096
# The columns of a listing part, in the listing's order: the file, its version (size:ETag or size:mtime,
# what a rerun compares), its size (-1: unknown) and the image id a run records (the manifest's, or derived).
LISTED_SCHEMA = pa.schema([("uri", pa.string()), ("version", pa.string()), ("size", pa.int64()),
                           ("image_id", pa.int64())])


@dataclass(frozen=True)
class ListingJob:
    """What every listing task of one run needs."""

    root: str
    """The URI that file names are relative to (a manifest's ``file_name``)."""
    parts: str | None
    """The folder that image-file parts are written to; None: every file goes back to the caller."""
    images: bool = True
    """Whether image files are wanted at all (``--input-format`` auto or images)."""
    manifest: dict[str, int] | None = None
    part_rows: int = PART_ROWS
    inline_max: int = INLINE_MAX


@dataclass
class Sums:
    """What a listing adds up over its tasks."""

    others: list[tuple[str, str]] = field(default_factory=list)
    """``(uri, version)`` of shards, index files and other tables (sorted by the caller)."""
    counts: Counter = field(default_factory=Counter)
    """Files by kind: ``images``, ``tar``, ``parquet``, ``text`` (CSV and JSON-lines tables), ``other``."""
    names: int = 0
    contents: int = 0
    """:func:`~detbatch.detect.units.names_sum` of the image files' names, and of names with versions."""

    def add(self, other: "Sums") -> None:
        self.others += other.others
        self.counts.update(other.counts)
        self.names += other.names
        self.contents += other.contents


@dataclass
class Found(Sums):
    """One task's listing: its segments in order, and its sums."""

    segments: list[tuple[str, Any]] = field(default_factory=list)
    """``("files", rows)`` (LISTED_SCHEMA dicts), ``("parts", [(name, rows)])`` or ``("prefix", uri)``."""


def kind_of(path: str) -> str:
    """``images``, ``tar``, ``parquet``, ``text`` (a CSV or JSON-lines table: an index) or ``other``."""
    ext = posixpath.splitext(path)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return "images"
    for kind, shard_ext in SHARD_EXTENSIONS.items():
        if ext == shard_ext:
            return kind
    return "text" if ext in INDEX_EXTENSIONS else "other"


def part_bytes(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=LISTED_SCHEMA), buf, compression="zstd",
                   row_group_size=PART_ROW_GROUP)
    return buf.getvalue()


def write_part(folder: str, rows: list[dict[str, Any]]) -> tuple[str, int]:
    """Write ``rows`` as a new part under ``folder``: ``(its name, rows)``. Names are unique, so that a
    listing task retried by Ray, or one of a dead run, never overwrites a part that a plan names."""
    name = f"part-{uuid.uuid4().hex[:16]}.parquet"
    storage.write_bytes(storage.join(folder, name), part_bytes(rows))
    return name, len(rows)


def found_in(fs: Any, files: dict[str, dict[str, Any]], prefixes: list[str], job: ListingJob) -> Found:
    """The :class:`Found` of ``files`` (``{path: info}``) and sub-prefixes (URIs), in the listing's order."""
    found = Found()
    keyed = [(p, "file", p) for p in files] + [(storage.resolve(u)[1].rstrip("/") + "/", "prefix", u) for u in prefixes]
    run: list[dict[str, Any]] = []

    def close_run() -> None:
        if not run:
            return
        if job.parts is not None and len(run) >= job.inline_max:
            found.segments.append(("parts", [write_part(job.parts, run[i:i + job.part_rows])
                                             for i in range(0, len(run), job.part_rows)]))
        else:
            found.segments.append(("files", list(run)))
        run.clear()

    for _, what, item in sorted(keyed):
        if what == "prefix":
            close_run()
            found.segments.append(("prefix", item))
            continue
        kind = kind_of(item)
        found.counts[kind] += 1
        info = files[item]
        uri, version = storage.to_uri(fs, item), file_version(info)
        if kind != "images":
            if kind != "other":
                found.others.append((uri, version))
            continue
        if not job.images:
            continue
        found.names += names_sum([uri])
        found.contents += names_sum([f"{uri}\0{version}"])
        size = info.get("size")
        run.append({"uri": uri, "version": version, "size": size if isinstance(size, int) else -1,
                    "image_id": image_id_for(uri, relative_name(uri, job.root, "images"), job.manifest, None)})
    close_run()
    return found


def list_level(uri: str, recurse: bool, job: ListingJob) -> tuple[list[str], Found]:
    """``(sub-prefix URIs, Found)`` of the files directly under ``uri`` (a delimiter listing), or with
    ``recurse`` of every file below it (and no sub-prefixes). Run as a Ray task (two returns, so that the
    driver fetches the sub-prefixes at once and the files only when it reaches them)."""
    fs, path = storage.resolve(uri)

    def listed() -> tuple[dict[str, dict[str, Any]], list[str]]:
        fs.invalidate_cache(path)
        if recurse:
            return {p: i for p, i in fs.find(path, detail=True).items() if i.get("type", "file") == "file"}, []
        files, subs = {}, []
        for info in fs.ls(path, detail=True):
            name = info["name"].rstrip("/")
            if info.get("type") == "directory":
                if name != path.rstrip("/"):
                    subs.append(storage.to_uri(fs, name))
            else:
                files[name] = info
        return files, sorted(subs)

    files, subs = listing_call(uri, listed)
    return subs, found_in(fs, files, subs, job)


def list_tree(uri: str, job: ListingJob, parallel: bool | None = None) -> Iterator[tuple[str, Any]]:
    """Every file below the folder/prefix ``uri``, as the segments of its tasks in the listing's order
    (``("found", Found)`` first for each task, whose sums and other files count; then its segments, a
    ``prefix`` replaced by that sub-prefix's own segments).

    ``parallel``: a Ray task per sub-prefix down to :data:`SPLIT_DEPTH` (True: Ray must be up); None: when
    Ray is up; False: one ``find``, in a Ray task when the job writes parts and Ray is up (the driver then
    holds no file of a long run), else here.
    """
    import ray

    up = ray.is_initialized()
    if parallel is None:
        parallel = up
    if not parallel and not (up and job.parts is not None):
        found = list_level(uri, recurse=True, job=job)[1]
        yield "found", found
        yield from found.segments
        return
    task = ray.remote(num_cpus=0.1, max_retries=3, num_returns=2)(list_level)
    # Every level is started as soon as its parent's sub-prefixes are known; the files are fetched in order.
    results: dict[str, Any] = {}
    frontier = [(uri, 0)]
    tasks = 0
    shared = ray.put(job)  # the manifest, once for every task
    while frontier:
        submitted = [(u, depth, *task.remote(u, not parallel or depth >= SPLIT_DEPTH, shared)) for u, depth in frontier]
        tasks += len(submitted)
        frontier = []
        for u, depth, subs_ref, found_ref in submitted:
            results[u] = found_ref
            frontier += [(s, depth + 1) for s in _get(subs_ref)]
    logger.info("%s: listed in %d %s", uri, tasks, "parallel tasks" if parallel else "task")

    def in_order(u: str) -> Iterator[tuple[str, Any]]:
        found = _get(results.pop(u))
        yield "found", found
        for what, item in found.segments:
            if what == "prefix":
                yield from in_order(item)
            else:
                yield what, item

    yield from in_order(uri)


def _get(ref: Any) -> Any:
    """``ray.get``, raising a listing task's own error (a StorageError names the prefix and the fix)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        raise e.cause from None


@dataclass
class Listed(Sums):
    """A listing, summed: its image files as parts (in order), the other files, the counts and digests."""

    parts: list[tuple[str, int]] = field(default_factory=list)
    """``(part name, rows)`` in the listing's order; the parts are in ``job.parts``."""
    images: list[dict[str, Any]] | None = None
    """Every image row in order, when the job writes no parts (``job.parts`` None)."""


def walk(segments: Iterator[tuple[str, Any]], job: ListingJob) -> Listed:
    """Gather :func:`list_tree`'s segments in order: the short runs of image files into parts of up to
    :data:`PART_ROWS` (written here, between the tasks' own parts), the rest summed."""
    listed = Listed(images=[] if job.parts is None else None)
    buffer: list[dict[str, Any]] = []

    def flush(whole: bool) -> None:
        while len(buffer) >= job.part_rows or whole and buffer:
            listed.parts.append(write_part(job.parts, buffer[:job.part_rows]))
            del buffer[:job.part_rows]

    for what, item in segments:
        if what == "found":
            listed.add(item)
        elif what == "files" and listed.images is not None:
            listed.images += item
        elif what == "files":
            buffer += item
            flush(whole=False)
        elif what == "parts":
            flush(whole=True)
            listed.parts += item
    if job.parts is not None:
        flush(whole=True)
    return listed


def read_part(uri: str, columns: list[str] | None = None) -> pa.Table:
    """A listing part (or the single listing file of an older detbatch, which has ``uri`` and ``version``)."""
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(storage.read_bytes(uri)), columns=columns)
