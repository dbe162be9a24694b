"""The persisted plan: a run's units and its listing, written into the output once, read by every rerun.

Layout (beside ``state.json``)::

    OUTPUT/_detbatch/listing.parquet   uri, version: every input file (images, shards or index files), sorted
    OUTPUT/_detbatch/plan.parquet      one row per unit, or per index file (PLAN_SCHEMA); the schema's
                                       metadata holds the listing's summary (kind, root, digests, files)

An index file is one plan row, its rows ``[start, stop)`` cut into units of ``step`` rows by the stream
(:func:`detbatch.detect.units.index_units`, in Ray tasks): the plan of 100M index rows in 100 files is
100 rows, not 390,625 units (docs/scaling.md).

The first run lists the input, plans it, and writes the listing, then the plan (each whole, so a plan that
exists is complete, and its listing before it). A rerun reads the plan and does not list the input: its
digests are the plan's, so ``state.json`` is compared with what the first run saw. ``--verify-input``
relists and compares with the stored listing, and refuses a changed input, naming the files added, removed
or replaced (:func:`input_changes`). ``--overwrite`` deletes both files with the run's other files.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from detbatch import storage
from detbatch.config import ConfigError
from detbatch.detect.read import listed_size
from detbatch.detect.output import LISTING_FILE, PLAN_FILE
from detbatch.detect.units import InputListing, ListingSummary, list_input
from detbatch.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from detbatch.detect.config import DetectConfig

logger = logging.getLogger(__name__)

# Version of the plan's layout (in its metadata); a plan of another version is ignored and rewritten.
PLAN_FORMAT = 2
_META_KEY = b"detbatch.plan"

# uris: image files: the unit's files; a shard or an index: that one file. sizes: image files: each one's
# size as listed (-1: unknown), so that read_unit refuses one over max_bytes without a request.
# start, stop: an index: the row's rows [start, stop) of its index file; -1 otherwise. step: an index file's
# row, cut into units of step rows numbered from unit; -1: the row is one unit.
PLAN_SCHEMA = pa.schema([
    ("unit", pa.int64()), ("kind", pa.string()), ("uris", pa.list_(pa.string())),
    ("image_ids", pa.list_(pa.int64())), ("sizes", pa.list_(pa.int64())), ("start", pa.int64()), ("stop", pa.int64()),
    ("step", pa.int64()),
])
LISTING_SCHEMA = pa.schema([("uri", pa.string()), ("version", pa.string())])

# Units gathered into one Arrow batch while the plan is built: the driver never holds them as Python
# objects all at once.
UNITS_PER_BATCH = 4096


def plan_table(units: Iterable[dict[str, Any]], listing: InputListing, summary: ListingSummary) -> pa.Table:
    """The plan of ``units`` (:func:`detbatch.detect.units.plan_rows`, or the units of
    :func:`~detbatch.detect.units.unit_rows`) as a :data:`PLAN_SCHEMA` table with ``summary`` in its
    metadata; image files get their listed ``sizes``."""
    sizes = ({u: listed_size(v) for u, v in zip(listing.uris, listing.versions)}
             if listing.kind == "images" else {})
    batches, rows = [], []

    def flush() -> None:
        if rows:
            batches.append(pa.RecordBatch.from_pylist(rows, schema=PLAN_SCHEMA))
            rows.clear()

    for u in units:
        listed = [sizes.get(uri) for uri in u["uris"]] if listing.kind == "images" else []
        rows.append({"unit": u["unit"], "kind": u["kind"], "uris": u["uris"], "image_ids": u["image_ids"],
                     "sizes": [-1 if s is None else s for s in listed],
                     "start": u.get("start", -1), "stop": u.get("stop", -1), "step": u.get("step", -1)})
        if len(rows) == UNITS_PER_BATCH:
            flush()
    flush()
    table = pa.Table.from_batches(batches, schema=PLAN_SCHEMA)
    meta = {"format": PLAN_FORMAT, **asdict(summary)}
    return table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})


def unit_ids(plan: pa.Table) -> tuple["np.ndarray", "np.ndarray"]:
    """Every unit of ``plan`` in order, and the plan row each belongs to (an index file's row holds
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


def write_plan(output: str, plan: pa.Table, listing: InputListing) -> None:
    """Write the listing, then the plan (its presence says both are whole)."""
    stored = pa.table({"uri": list(listing.uris), "version": list(listing.versions)}, schema=LISTING_SCHEMA)
    storage.write_bytes(storage.join(output, LISTING_FILE), _parquet_bytes(stored))
    storage.write_bytes(storage.join(output, PLAN_FILE), _parquet_bytes(plan))


def read_plan(output: str) -> tuple[pa.Table, ListingSummary] | None:
    """The plan of ``output`` and its listing's summary, or None when there is none (or of another format)."""
    try:
        data = storage.read_bytes(storage.join(output, PLAN_FILE))
    except FileNotFoundError:
        return None
    table = pq.read_table(io.BytesIO(data))
    meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
    if meta.pop("format", None) != PLAN_FORMAT:
        return None
    return table.cast(PLAN_SCHEMA), ListingSummary(**meta)


def read_listing(output: str) -> dict[str, str]:
    """uri -> version of the listing stored with the plan."""
    table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(output, LISTING_FILE))))
    return dict(zip(table.column("uri").to_pylist(), table.column("version").to_pylist()))


def input_changes(then: dict[str, str], now: InputListing, shown: int = 3) -> str:
    """What differs between a stored listing and a new one ("" when nothing): files added, removed and
    replaced (another size or ETag/mtime), each with its first few names."""
    current = dict(zip(now.uris, now.versions))
    added = [u for u in now.uris if u not in then]
    removed = sorted(u for u in then if u not in current)
    replaced = [u for u in now.uris if u in then and then[u] != current[u]]
    parts = []
    for what, uris in (("added", added), ("removed", removed), ("replaced", replaced)):
        if uris:
            more = f", ... {len(uris) - shown} more" if len(uris) > shown else ""
            parts.append(f"{len(uris)} {what} ({', '.join(uris[:shown])}{more})")
    return "; ".join(parts)


def listing_or_plan(config: "DetectConfig") -> tuple[InputListing | None, pa.Table | None, ListingSummary]:
    """``(listing, None, its summary)`` for a new output (or with ``--overwrite``); ``(None, plan, its
    summary)`` for a rerun over an output with a persisted plan, without listing the input; with
    ``--verify-input`` the input is listed too and a change from the plan's listing is refused."""
    from detbatch.runtime import init_ray

    inp, out = config.input, config.output
    stored = None if out.overwrite else read_plan(out.uri)
    if stored is not None and not inp.verify:
        logger.info("%s: resuming from its plan (%d rows); the input is not listed (--verify-input lists "
                    "it and compares)", out.uri, stored[0].num_rows)
        return None, *stored
    if inp.parallel_listing and _is_folder(inp.uri):
        init_ray(config.ray.address)  # list sub-prefixes in tasks (detbatch.detect.listing)
    listing = list_input(inp.uri, inp.format, parallel=None if inp.parallel_listing else False)
    if listing.kind == "index" and inp.manifest:
        raise ConfigError(f"--manifest {inp.manifest} cannot be used with an index input ({inp.uri}); give "
                          f"the images their ids in the index's image_id column (docs/data.md)")
    if stored is not None:
        changes = input_changes(read_listing(out.uri), listing)
        if changes or stored[1].digest != listing.digest:
            raise InputError(f"--verify-input: {inp.uri} changed since {out.uri} was planned: {changes}; use "
                             f"another --output, or --overwrite to start over")
        logger.info("--verify-input: %s lists the same %d files as the plan", inp.uri, listing.num_inputs)
        return None, *stored
    return listing, None, listing.summary()


def _is_folder(uri: str) -> bool:
    """Whether ``uri`` is a folder or prefix, what a parallel listing splits: not a file, a glob, or nothing
    (which :func:`list_input` then names, before Ray is started for it)."""
    fs, path = storage.resolve(uri)
    if any(c in path for c in "*?["):
        return False
    try:
        return storage.retrying(lambda: fs.info(path), f"{uri}: look").get("type") == "directory"
    except Exception:  # not found, or unreachable: list_input's error says which
        return False
