"""Parquet sink and the commit log that makes detect exactly-once.

Layout of a detect output::

    OUTPUT/detections/UUUUUUUU-SSSSSSS-EEEEEEE[-last].parquet   one row per detection
    OUTPUT/images/UUUUUUUU-SSSSSSS-EEEEEEE[-last].parquet       one row per image (the commit record)
    OUTPUT/_detbatch/state.json                                   what this output is being computed with
    OUTPUT/run.json                                               written last, on success

A file pair covers the images ``[S, E)`` of unit ``U`` (see :mod:`detbatch.detect.units`); ``-last`` marks
the pair that holds the unit's last image. The detections file is written first, the images file
second, each whole (an object PUT, or a rename locally). So an images file is proof that its range
is done, detections included; a detections file without its images file is debris of a crash.
A rerun reads only these *names* to know what is committed.
"""

from __future__ import annotations

import io
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from detbatch import storage

logger = logging.getLogger(__name__)

DETECTIONS_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("uri", pa.string()),
        ("category_id", pa.int32()),
        ("category", pa.string()),
        ("score", pa.float32()),
        ("x_min", pa.float32()),
        ("y_min", pa.float32()),
        ("x_max", pa.float32()),
        ("y_max", pa.float32()),
    ]
)

IMAGES_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("uri", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("num_detections", pa.int32()),
        ("status", pa.string()),
        ("error", pa.string()),
    ]
)

SUMMARY_SCHEMA = pa.schema(
    [("unit", pa.int64()), ("images_ok", pa.int64()), ("images_error", pa.int64()), ("detections", pa.int64())]
)

_PART = re.compile(r"^(\d{8})-(\d{7,})-(\d{7,})(-last)?\.parquet$")


def part_name(unit: int, start: int, stop: int, last: bool) -> str:
    return f"{unit:08d}-{start:07d}-{stop:07d}{'-last' if last else ''}.parquet"


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _contiguous_runs(units: np.ndarray, indices: np.ndarray) -> list[tuple[int, int, int]]:
    """Row spans ``(unit, row_begin, row_end)`` of a batch sorted by (unit, index) where the
    indices follow each other without a gap; each becomes one file pair."""
    runs, begin = [], 0
    for i in range(1, len(units) + 1):
        if i == len(units) or units[i] != units[begin] or indices[i] != indices[i - 1] + 1:
            runs.append((int(units[begin]), begin, i))
            begin = i
    return runs


def explode_detections(scored: pa.Table) -> pa.Table:
    """Per-image list columns -> one row per detection, in :data:`DETECTIONS_SCHEMA`."""
    parents = pc.list_parent_indices(scored["score"])
    boxes = pc.list_flatten(scored["box"]).to_numpy().reshape(-1, 4)
    return pa.table(
        {
            "image_id": pc.take(scored["image_id"], parents),
            "uri": pc.take(scored["uri"], parents),
            "category_id": pc.list_flatten(scored["category_id"]),
            "category": pc.list_flatten(scored["category"]),
            "score": pc.list_flatten(scored["score"]),
            "x_min": boxes[:, 0],
            "y_min": boxes[:, 1],
            "x_max": boxes[:, 2],
            "y_max": boxes[:, 3],
        },
        schema=DETECTIONS_SCHEMA,
    )


def image_rows(scored: pa.Table) -> pa.Table:
    return pa.table(
        {
            "image_id": scored["image_id"],
            "uri": scored["uri"],
            "width": scored["width"],
            "height": scored["height"],
            "num_detections": pc.cast(pc.list_value_length(scored["score"]), pa.int32()),
            "status": scored["status"],
            "error": scored["error"],
        },
        schema=IMAGES_SCHEMA,
    )


def write_parts(scored: pa.Table, output: str) -> pa.Table:
    """Sink for one batch of scored rows: write its file pairs, return per-unit counts."""
    scored = scored.sort_by([("unit", "ascending"), ("index", "ascending")])
    units = scored["unit"].to_numpy()
    indices = scored["index"].to_numpy()
    last = scored["last"].to_numpy(zero_copy_only=False)
    summary = defaultdict(lambda: [0, 0, 0])
    for unit, begin, end in _contiguous_runs(units, indices):
        part = scored.slice(begin, end - begin)
        name = part_name(unit, int(indices[begin]), int(indices[end - 1]) + 1, bool(last[end - 1]))
        detections = explode_detections(part)
        images = image_rows(part)
        storage.write_bytes(storage.join(output, "detections", name), _parquet_bytes(detections))
        storage.write_bytes(storage.join(output, "images", name), _parquet_bytes(images))  # the commit
        ok = int(pc.sum(pc.equal(images["status"], "ok")).as_py() or 0)
        counts = summary[unit]
        counts[0] += ok
        counts[1] += images.num_rows - ok
        counts[2] += detections.num_rows
    return pa.table(
        {
            "unit": list(summary),
            "images_ok": [c[0] for c in summary.values()],
            "images_error": [c[1] for c in summary.values()],
            "detections": [c[2] for c in summary.values()],
        },
        schema=SUMMARY_SCHEMA,
    )


@dataclass
class CommitLog:
    """What an output already holds, read from its file names."""

    ranges: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    """unit -> committed half-open index ranges, sorted."""
    finished: set[int] = field(default_factory=set)
    """Units whose every image is committed."""
    debris: list[str] = field(default_factory=list)
    """Files to delete before resuming: detections without their commit, overlapping parts."""

    def skip(self, unit: int) -> list[tuple[int, int]]:
        return self.ranges.get(unit, [])

    @property
    def committed_images(self) -> int:
        return sum(b - a for rs in self.ranges.values() for a, b in rs)


def _list_names(uri: str) -> list[str]:
    fs, path = storage.resolve(uri)
    try:
        return [p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)] if fs.exists(path) else []
    except FileNotFoundError:
        return []


def read_commit_log(output: str) -> CommitLog:
    log = CommitLog()
    images_dir, detections_dir = storage.join(output, "images"), storage.join(output, "detections")
    committed = set(_list_names(images_dir))
    parts: dict[int, list[tuple[int, int, bool, str]]] = defaultdict(list)
    for name in committed:
        m = _PART.match(name)
        if m:
            parts[int(m[1])].append((int(m[2]), int(m[3]), bool(m[4]), name))
    for name in _list_names(detections_dir):
        if _PART.match(name) and name not in committed:
            log.debris.append(storage.join(detections_dir, name))
    for unit, unit_parts in parts.items():
        unit_parts.sort()
        kept: list[tuple[int, int, bool, str]] = []
        for part in unit_parts:
            if kept and part[0] < kept[-1][1]:
                # Two runs wrote overlapping parts (not produced by detbatch itself, but never let
                # it double-count): drop the later one and recompute its range.
                logger.warning("overlapping parts %s and %s in unit %d; recomputing", kept[-1][3], part[3], unit)
                log.debris += [storage.join(images_dir, part[3]), storage.join(detections_dir, part[3])]
                continue
            kept.append(part)
        log.ranges[unit] = [(a, b) for a, b, _, _ in kept]
        covered = sum(b - a for a, b, _, _ in kept)
        if kept and kept[-1][2] and covered == kept[-1][1]:
            log.finished.add(unit)
    return log


def remove(uris: list[str]) -> None:
    for uri in uris:
        fs, path = storage.resolve(uri)
        try:
            fs.rm(path)
        except FileNotFoundError:
            pass
