"""The persisted plan: a run's listing and units, written into the output once, read by every rerun.

Layout (beside ``state.json``)::

    OUTPUT/_detbatch/listing/part-*.parquet   the input listing, in parts (LISTED_SCHEMA: uri, version,
                                              size, image_id), in the order the plan names them
    OUTPUT/_detbatch/plan.parquet             one row per listing part of image files, per shard, or per
                                              index file (PLAN_SCHEMA); the schema's metadata holds the
                                              listing's summary (kind, root, digests, files) and its parts

The first run lists the input under the output's lease (:func:`plan_input`): Ray tasks write the image
files into listing parts themselves (:mod:`detbatch.detect.listing`), so the driver holds no file of
the listing, only the parts' names and counts. The plan is a row per 16 units of a part (its rows
``[start, stop)``, cut into units of ``step`` files: :func:`detbatch.detect.units.index_units`, as an index
file's rows are), and a unit's read task reads its files from its part's row groups
(:func:`detbatch.detect.read.read_unit`). Shards are one unit each. 100M image files make ~800 listing
parts and ~25,000 plan rows (docs/scaling.md).

A plan that exists is whole (it is written last), and a rerun reads it and does not list the input: its
digests are the plan's, so ``state.json`` is compared with what the first run saw. ``--verify-input``
lists the input again (into ``_detbatch/verify/``, removed after) and refuses a changed input, naming the
files added, removed or replaced (:func:`input_changes`, a merge of the two sorted listings, part by
part). ``--overwrite`` deletes the plan and the listing with the run's other files.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from detbatch import storage
from detbatch.config import ConfigError
from detbatch.detect.listing import ListingJob, Listed, read_part, write_part
from detbatch.detect.output import LISTING_DIR, LISTING_FILE, PLAN_FILE, VERIFY_DIR, OpenedOutput, record_input
from detbatch.detect.units import (
    InputListing,
    ListingSummary,
    choose_format,
    digest_hex,
    gather,
    input_shape,
    kind_files,
    listed_size,
    plan_rows,
    UNITS_PER_ROW,
)
from detbatch.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from detbatch.detect.config import DetectConfig

logger = logging.getLogger(__name__)

# Version of the plan's layout (in its metadata). 3: listing parts, a row per part of image files.
# 2 (a row per unit of image files, the listing in one file) is still read; any other is ignored.
PLAN_FORMAT = 3
_READ_FORMATS = (2, 3)
_META_KEY = b"detbatch.plan"

# uris: a listing part of image files (its name in the output), a shard or an index file: that one file;
# or, in a unit of image files (a stream's, or a plan of format 2), the unit's files. sizes: the files'
# sizes as listed (-1: unknown), so that read_unit refuses one over max_bytes without a request.
# start, stop: the row's rows [start, stop) of its part or index file; -1 otherwise. step: the row is cut
# into units of step rows numbered from unit; -1: the row is one unit.
PLAN_SCHEMA = pa.schema([
    ("unit", pa.int64()), ("kind", pa.string()), ("uris", pa.list_(pa.string())),
    ("image_ids", pa.list_(pa.int64())), ("sizes", pa.list_(pa.int64())), ("start", pa.int64()), ("stop", pa.int64()),
    ("step", pa.int64()),
])


@dataclass(frozen=True)
class StoredPlan:
    table: pa.Table
    summary: ListingSummary
    listing: list[str]
    """The listing's files (names relative to the output), in order."""


@dataclass(frozen=True)
class ListedInput:
    """A listing written into an output: its summary, its parts (names relative to the output, and rows),
    and for shards and index files the listing itself (few files), which their plan is made from."""

    summary: ListingSummary
    parts: list[tuple[str, int]]
    listing: InputListing | None


def plan_table(rows: Iterable[dict[str, Any]], summary: ListingSummary, listing: list[str] = ()) -> pa.Table:
    """``rows`` (:func:`detbatch.detect.units.plan_rows`, its units, or :func:`part_rows`) as a
    :data:`PLAN_SCHEMA` table with ``summary`` and the ``listing`` parts in its metadata."""
    rows = [{"image_ids": [], "sizes": [], "start": -1, "stop": -1, "step": -1, **r} for r in rows]
    table = pa.Table.from_pylist(rows, schema=PLAN_SCHEMA)
    meta = {"format": PLAN_FORMAT, **asdict(summary), "listing": list(listing)}
    return table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})


def part_rows(parts: list[tuple[str, int]], images_per_unit: int) -> Iterator[dict[str, Any]]:
    """The plan rows of a listing of image files: one per :data:`UNITS_PER_ROW` units of a part (the
    last of a part shorter), each cut into units of ``images_per_unit`` files by the stream; units are
    numbered on across the parts."""
    unit = 0
    span = UNITS_PER_ROW * images_per_unit
    for name, rows in parts:
        for start in range(0, rows, span):
            stop = min(start + span, rows)
            yield {"unit": unit, "kind": "images", "uris": [name], "start": start, "stop": stop, "step": images_per_unit}
            unit += -(-(stop - start) // images_per_unit)


def unit_ids(plan: pa.Table) -> tuple["np.ndarray", "np.ndarray"]:
    """Every unit of ``plan`` in order, and the plan row each belongs to (a row of ``step`` > 0 holds
    ``ceil((stop - start) / step)`` units numbered from its ``unit``): two int64 arrays, 16 B per unit."""
    import numpy as np

    first = plan["unit"].to_numpy()
    step = plan["step"].to_numpy()
    ranged = step > 0
    counts = np.ones(len(first), np.int64)
    counts[ranged] = -(-(plan["stop"].to_numpy()[ranged] - plan["start"].to_numpy()[ranged]) // step[ranged])
    row_of = np.repeat(np.arange(len(first), dtype=np.int64), counts)
    offsets = np.arange(len(row_of), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return first[row_of] + offsets, row_of


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def write_plan(output: str, plan: pa.Table) -> None:
    """Write the plan, after its listing parts: its presence says both are whole."""
    storage.write_bytes(storage.join(output, PLAN_FILE), _parquet_bytes(plan))


def read_plan(output: str) -> StoredPlan | None:
    """The plan of ``output``, or None when there is none (or of a format this detbatch does not read)."""
    try:
        data = storage.read_bytes(storage.join(output, PLAN_FILE))
    except FileNotFoundError:
        return None
    table = pq.read_table(io.BytesIO(data))
    meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
    if meta.pop("format", None) not in _READ_FORMATS:
        return None
    listing = meta.pop("listing", [LISTING_FILE])
    return StoredPlan(table.cast(PLAN_SCHEMA), ListingSummary(**meta), listing)


def listed_files(output: str, names: list[str]) -> Iterator[tuple[str, str]]:
    """``(uri, version)`` of every file of a listing stored in ``output`` (its parts, in order), one part
    in memory at a time."""
    for name in names:
        part = read_part(storage.join(output, name), ["uri", "version"])
        yield from zip(part.column("uri").to_pylist(), part.column("version").to_pylist())


def input_changes(then: Iterable[tuple[str, str]], now: Iterable[tuple[str, str]], shown: int = 3) -> str:
    """What differs between two listings, each ``(uri, version)`` in sorted order ("" when nothing): files
    added, removed and replaced (another size or ETag/mtime), each with its first few names. One pass
    over both, as a merge: neither is held whole."""
    found: dict[str, list[str]] = {"added": [], "removed": [], "replaced": []}
    counts = dict.fromkeys(found, 0)

    def note(what: str, uri: str) -> None:
        counts[what] += 1
        if len(found[what]) < shown:
            found[what].append(uri)

    old, new = iter(then), iter(now)
    a, b = next(old, None), next(new, None)
    while a is not None or b is not None:
        if b is None or a is not None and a[0] < b[0]:
            note("removed", a[0])
            a = next(old, None)
        elif a is None or b[0] < a[0]:
            note("added", b[0])
            b = next(new, None)
        else:
            if a[1] != b[1]:
                note("replaced", a[0])
            a, b = next(old, None), next(new, None)
    parts = []
    for what, uris in found.items():
        if counts[what]:
            more = f", ... {counts[what] - shown} more" if counts[what] > shown else ""
            parts.append(f"{counts[what]} {what} ({', '.join(uris)}{more})")
    return "; ".join(parts)


def _clear(output: str, folder: str, keep: Iterable[str] = ()) -> None:
    """Remove the files of ``folder`` in ``output``, but those named ``keep`` (relative to the output)."""
    uri = storage.join(output, folder)
    kept = set(keep)
    storage.remove([storage.join(uri, n) for n in storage.list_names(uri, hidden=True) if f"{folder}/{n}" not in kept])


def remove_stray_parts(output: str, plan: pa.Table) -> None:
    """Remove the listing parts ``plan`` does not name: those a listing task of a killed run wrote after
    this run had emptied the folder (the caller holds the lease)."""
    meta = json.loads((plan.schema.metadata or {}).get(_META_KEY, b"{}"))
    if "listing" in meta:
        _clear(output, LISTING_DIR, keep=meta["listing"])


def list_into(config: "DetectConfig", folder: str, manifest: dict[str, int] | None) -> ListedInput:
    """List the input into ``folder`` of the output (emptied first; the caller holds the lease): image
    files as parts written by the listing tasks, shards and index files as one part written here."""
    inp, out = config.input, config.output.uri
    shape = input_shape(inp.uri)
    _clear(out, folder)
    parts = storage.join(out, folder)
    job = ListingJob(root=shape.root, parts=parts, images=inp.format in ("auto", "images"), manifest=manifest)
    listed: Listed = gather(shape, job, parallel=None if inp.parallel_listing else False)
    named = [(f"{folder}/{name}", rows) for name, rows in listed.parts]
    try:
        kind = choose_format(inp.uri, inp.format, listed)
    except InputError:
        _clear(out, folder)
        raise
    if kind == "images":
        summary = ListingSummary(kind, shape.root, digest_hex(listed.names), digest_hex(listed.contents),
                                 listed.counts["images"])
        return ListedInput(summary, named, None)
    if kind == "index" and inp.manifest:
        raise ConfigError(f"--manifest {inp.manifest} cannot be used with an index input ({inp.uri}); give "
                          f"the images their ids in the index's image_id column (docs/data.md)")
    storage.remove([storage.join(out, name) for name, _ in named])  # image files beside shards: not this run's
    files = kind_files(kind, listed.others)
    listing = InputListing(kind, shape.root, tuple(u for u, _ in files), tuple(v for _, v in files))
    name, rows = write_part(parts, [{"uri": u, "version": v, "size": listed_size(v), "image_id": -1} for u, v in files])
    return ListedInput(listing.summary(), [(f"{folder}/{name}", rows)], listing)


def plan_input(config: "DetectConfig", opened: OpenedOutput, manifest: dict[str, int] | None,
               stored: StoredPlan | None) -> tuple[pa.Table, ListingSummary]:
    """The plan of a run that lists its input (Ray up, the output's lease held): a first run lists, records
    the listing's digests in state.json (refusing an input other than the one an earlier run started on),
    and writes its plan; with ``stored`` (``--verify-input`` over a planned output) the input is listed
    again and a change from the stored listing refused."""
    out = config.output.uri
    if stored is not None:
        try:
            now = list_into(config, VERIFY_DIR, manifest)
            same = (now.summary.digest, now.summary.content_digest) == (stored.summary.digest, stored.summary.content_digest)
            # A plan of format 2 has digests of another kind: the merge says whether the files are the same.
            changes = "" if same else input_changes(listed_files(out, stored.listing),
                                                    listed_files(out, [n for n, _ in now.parts])) or \
                ("" if now.summary.kind == stored.summary.kind else f"{stored.summary.kind} then, {now.summary.kind} now")
        finally:
            _clear(out, VERIFY_DIR)
        if changes:
            raise InputError(f"--verify-input: {config.input.uri} changed since {out} was planned: {changes}; use "
                             f"another --output, or --overwrite to start over")
        logger.info("--verify-input: %s lists the same %d files as the plan", config.input.uri, now.summary.num_inputs)
        record_input(opened, stored.summary)
        return stored.table, stored.summary
    now = list_into(config, LISTING_DIR, manifest)
    record_input(opened, now.summary)
    images_per_unit = config.input.images_per_unit
    rows = part_rows(now.parts, images_per_unit) if now.listing is None else \
        plan_rows(now.listing, images_per_unit, manifest)
    plan = plan_table(rows, now.summary, [n for n, _ in now.parts])
    opened.lease.check()
    write_plan(out, plan)
    logger.info("%s: %d %s inputs in %d listing parts; plan of %d rows", config.input.uri, now.summary.num_inputs,
                now.summary.kind, len(now.parts), plan.num_rows)
    return plan, now.summary
