"""The stream's CPU stages, from plan rows to decoded images: the units a plan row stands for (a task
that cuts an index file's or a listing part's row into units), then one task per unit that reads its
files or shard and decodes them (:mod:`detbatch.detect.read`, :mod:`detbatch.detect.decode`). The
detector pool that follows is the driver's (:mod:`detbatch.detect.driver`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pyarrow as pa

from detbatch import storage
from detbatch.detect import plan as plan_module
from detbatch.detect import read
from detbatch.detect.config import InputConfig
from detbatch.detect.decode import decode_batch
from detbatch.detect.units import InputListing, ListingSummary, index_units

if TYPE_CHECKING:
    import ray.data

# CPUs of the task that cuts plan rows into units (it reads nothing).
UNITS_STAGE_CPUS = 0.05
# Blocks of plan rows a large run hands Ray Data (so ~12 MB of the driver at most), each cut into its units
# by a task of the stream.
INPUT_BLOCKS = 256
# Units the driver cuts itself, into a block each, when a run has no more left than this. Ray Data costs
# the driver ~48 KB and ~3 ms per block it is handed (4,000 blocks: +193 MiB, 12 s on dev-2c), so past
# this a task of the stream cuts them instead, and Ray Data's split of its output into a block per unit
# runs as tasks of 1 CPU: cheap on a node with CPUs to spare, but on one whose CPUs the pool and the
# read tasks take (dev-2c: 1 actor + 1 read task), it slows the start (40k files: 38 s against 26 s).
DRIVER_UNITS = 1_024


def _units_left(row: dict[str, Any], finished: "np.ndarray", output: str) -> Iterator[dict[str, Any]]:
    """The units of a plan row not in ``finished`` (sorted), a listing part named by its URI in ``output``."""
    if row["kind"] == "images" and row["step"] > 0:
        row = {**row, "uris": [storage.join(output, row["uris"][0])]}
    for unit in index_units(row):
        at = np.searchsorted(finished, unit["unit"])
        if not (at < len(finished) and finished[at] == unit["unit"]):
            yield unit


def _units_stage(rows: dict[str, Any], finished: "np.ndarray", output: str) -> Iterator["pa.Table"]:
    """map_batches UDF over plan rows (batch_size=1): each unit left of the row (:func:`_units_left`), as a
    one-row :data:`~detbatch.detect.plan.PLAN_SCHEMA` table."""
    for i in range(len(rows["unit"])):
        row = {k: rows[k][i] for k in rows}
        row = {k: list(v) if isinstance(v, np.ndarray) else (v.item() if hasattr(v, "item") else v)
               for k, v in row.items()}
        for unit in _units_left(row, finished, output):
            yield pa.Table.from_pylist([unit], schema=plan_module.PLAN_SCHEMA)


def _read_stage(
    units: dict[str, Any], manifest: dict[str, int] | None, skips: dict[int, list[tuple[int, int]]],
    max_bytes: int | None = None,
) -> Iterator["pa.Table"]:
    """map_batches UDF over unit rows (batch_size=1): yield the unit's images in small batches.
    ``max_bytes``: ``input.max_bytes`` (:func:`detbatch.detect.read.read_unit`)."""
    for i in range(len(units["unit"])):
        unit = {k: units[k][i] for k in units}
        for column in ("uris", "image_ids", "sizes"):
            if column in unit:
                unit[column] = list(unit[column])
        rows = []
        for row in read.read_unit(unit, manifest, skips.get(int(unit["unit"]), []), max_bytes):
            rows.append(row)
            if len(rows) == read.ROWS_PER_READ_BATCH:
                yield pa.Table.from_pylist(rows, schema=read.READ_SCHEMA)
                rows = []
        if rows:
            yield pa.Table.from_pylist(rows, schema=read.READ_SCHEMA)


def read_and_decode(
    units: "list[dict[str, Any]] | pa.Table",
    listing: InputListing | ListingSummary,
    manifest: dict[str, int] | None,
    skips: dict[int, list[tuple[int, int]]],
    decode_cpus: float,
    caps: InputConfig | None = None,
    keep_jpeg: bool = False,
    finished: "np.ndarray | None" = None,
    output: str = "",
    driver_units: int | None = None,
) -> "ray.data.Dataset":
    """The CPU stages: one task per unit reads its files or shard and decodes them, and its images
    leave as one block (split only past Ray Data's 128 MiB block size), so that a unit of
    ``rows_per_file`` images reaches the pool as one call. ``units``: a plan
    (:data:`detbatch.detect.plan.PLAN_SCHEMA`), or :func:`~detbatch.detect.units.plan_units`' rows with
    the ``listing`` they came from. ``caps``: the input settings whose ``max_bytes`` and ``max_pixels``
    refuse a file before it is read or decoded (None: their defaults). ``keep_jpeg``: plain JPEGs leave
    undecoded, for the actors (``inference.decode: gpu``; :func:`detbatch.detect.decode.decode_or_keep_jpeg`).

    A plan row of an index file or a listing part of image files (in ``output``) stands for up to 16
    units, ranges of its rows, each read by a task of its own; a shard's row is one unit. With up to
    ``driver_units`` units left (None: :data:`DRIVER_UNITS`) the driver cuts the rows into a block per
    unit; past that it hands Ray Data at most :data:`INPUT_BLOCKS` blocks of plan rows, a task of the
    stream cuts them (:func:`_units_stage`, skipping the ``finished`` units) and Ray Data splits its
    output into a block per unit: the driver never holds a block per unit of a large run."""
    import ray

    caps = caps or InputConfig()
    if isinstance(units, list):
        units = plan_module.plan_table(units, listing.summary())
    # Shards need the manifest in the workers; image files carry their ids in the unit rows, and their
    # listed sizes, so that a file over max_bytes is refused without a request.
    shard_manifest = manifest if listing.kind in ("tar", "parquet") else None
    finished = np.array([], np.int64) if finished is None else finished
    driver_units = DRIVER_UNITS if driver_units is None else driver_units
    if (~np.isin(plan_module.unit_ids(units)[0], finished)).sum() <= driver_units:
        # One single-row table per unit: one block, so one read task, per unit. (take() copies the row,
        # so that a block does not carry the whole plan's buffers with it.)
        rows = [unit for row in units.to_pylist() for unit in _units_left(row, finished, output)]
        units = pa.Table.from_pylist(rows, schema=plan_module.PLAN_SCHEMA)
        return _read_and_decode(ray.data.from_arrow([units.take([i]) for i in range(units.num_rows)]),
                                decode_cpus, shard_manifest, skips, caps, keep_jpeg)
    # At most INPUT_BLOCKS blocks of plan rows, cut into units by a task of the stream. A num_cpus unlike
    # the read stage's keeps Ray Data from fusing the two (operator_fusion: remote args must be equal),
    # so that the units spread over many read tasks.
    n, per_block = units.num_rows, -(-units.num_rows // INPUT_BLOCKS)
    ds = ray.data.from_arrow([units.take(list(range(i, min(i + per_block, n)))) for i in range(0, n, per_block)])
    cpus = UNITS_STAGE_CPUS if abs(decode_cpus - UNITS_STAGE_CPUS) > 1e-9 else UNITS_STAGE_CPUS / 2
    # One block per unit (Ray Data would gather the stage's output into blocks of up to 128 MiB).
    ds = ds.map_batches(_units_stage, batch_size=1, num_cpus=cpus, fn_kwargs={"finished": finished, "output": output}
                        ).repartition(target_num_rows_per_block=1)
    return _read_and_decode(ds, decode_cpus, shard_manifest, skips, caps, keep_jpeg)


def _read_and_decode(ds: "ray.data.Dataset", decode_cpus: float, shard_manifest: dict[str, int] | None,
                     skips: dict[int, list[tuple[int, int]]], caps: InputConfig, keep_jpeg: bool) -> "ray.data.Dataset":
    """``ds`` of a block per unit, read and decoded: a task per unit."""
    return (
        ds.map_batches(_read_stage, batch_size=1, num_cpus=decode_cpus,
                     fn_kwargs={"manifest": shard_manifest, "skips": skips, "max_bytes": caps.max_bytes})
        # batch_size=None: decode each block the reader yields. Ray fuses the two stages into one task
        # that takes max(batch sizes) input rows, and input rows are units: a batch size here would
        # put that many units in one task, whose output then reaches a single actor.
        .map_batches(decode_batch, batch_size=None, num_cpus=decode_cpus,
                     fn_kwargs={"max_pixels": caps.max_pixels, "keep_jpeg": keep_jpeg})
    )
