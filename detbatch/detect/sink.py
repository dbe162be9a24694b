"""Parquet sink and the commit log that makes detect exactly-once.

Layout of a detect output::

    OUTPUT/detections/UUUUUUUU-SSSSSSS-EEEEEEE[-last].gGGGGGG.parquet   one row per detection
    OUTPUT/images/UUUUUUUU-SSSSSSS-EEEEEEE[-last].gGGGGGG.parquet       one row per image (the commit record)
    OUTPUT/_detbatch/state.json        what this output is being computed with (detbatch.detect.output)
    OUTPUT/_detbatch/lease/*.json      who writes it (detbatch.detect.lease)
    OUTPUT/run.json                    written last, on success

A file pair covers the images ``[S, E)`` of unit ``U`` (see :mod:`detbatch.detect.units`); ``-last`` marks
the pair that holds the unit's last image; ``G`` is the lease generation of the run that wrote it (outputs
of detbatch before leases have names without ``.gG``: generation 0). The detections file is written first,
the images file second, each whole (an object PUT, or an fsynced rename of a hidden temporary locally).

A part is *committed* when both of its files exist. Of committed parts that overlap (only a fenced-off
older writer can make them), the newer generation wins, then the earlier start; the rest, and every half
pair, are *debris*: never read, deleted by the next run that holds the lease. :func:`read_commit_log` is
the one reader of this protocol: detect's resume, its final counts and ``detbatch evaluate`` all use it,
and it reads only file *names*.
"""

from __future__ import annotations

import io
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from detbatch import storage
from detbatch.detect.lease import LeaseLost, superseded
from detbatch.faults import failpoint

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

DETBATCH_DIR = "_detbatch"
# Attempt records of detector calls (detbatch.detect.detector): which rows a call was running when it died.
ATTEMPTS_DIR = f"{DETBATCH_DIR}/attempts"
TABLES = ("detections", "images")
_PART = re.compile(r"^(\d{8})-(\d{7,})-(\d{7,})(-last)?(?:\.g(\d{6,}))?\.parquet$")


class Part(NamedTuple):
    """One file pair: the images ``[start, stop)`` of ``unit``, written by lease ``generation``.
    (A NamedTuple: a commit log of 200k parts makes 200k of them, and a frozen dataclass's ``__init__``
    was a fifth of reading it.)"""

    unit: int
    start: int
    stop: int
    last: bool
    generation: int
    name: str


def part_name(unit: int, start: int, stop: int, last: bool, generation: int = 0) -> str:
    tag = f".g{generation:06d}" if generation else ""
    return f"{unit:08d}-{start:07d}-{stop:07d}{'-last' if last else ''}{tag}.parquet"


def parse_part(name: str) -> Part | None:
    """The :class:`Part` a file name stands for, or None if it is not a part's name."""
    m = _PART.match(name)
    if m is None:
        return None
    return Part(int(m[1]), int(m[2]), int(m[3]), bool(m[4]), int(m[5] or 0), name)


def is_temporary(name: str) -> bool:
    """A local write's hidden temporary (:func:`detbatch.storage.write_bytes`), left by a crash mid-write."""
    return name.startswith(".") and ".tmp-" in name


def is_part_file(name: str) -> bool:
    """Whether a file under images/ or detections/ is detbatch's own (a part or a temporary)."""
    return parse_part(name) is not None or is_temporary(name)


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


def write_parts(scored: pa.Table, output: str, generation: int = 0) -> pa.Table:
    """Sink for one batch of scored rows: write its file pairs as lease ``generation``, return per-unit
    counts. Before each commit it checks that no newer run took the lease (:class:`LeaseLost` if one did),
    so a fenced-off writer stops at its next part."""
    scored = scored.sort_by([("unit", "ascending"), ("index", "ascending")])
    units = scored["unit"].to_numpy()
    indices = scored["index"].to_numpy()
    last = scored["last"].to_numpy(zero_copy_only=False)
    summary = defaultdict(lambda: [0, 0, 0])
    for unit, begin, end in _contiguous_runs(units, indices):
        part = scored.slice(begin, end - begin)
        name = part_name(unit, int(indices[begin]), int(indices[end - 1]) + 1, bool(last[end - 1]), generation)
        detections = explode_detections(part)
        images = image_rows(part)
        if generation and superseded(output, generation):
            raise LeaseLost(f"{output}: a newer run took this output's lease; generation {generation} stops writing")
        storage.write_bytes(storage.join(output, "detections", name), _parquet_bytes(detections))
        failpoint("sink.between_detections_and_images")
        storage.write_bytes(storage.join(output, "images", name), _parquet_bytes(images))  # the commit
        failpoint("sink.after_commit")
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
    """What an output holds, read from its file names (see the module docstring)."""

    parts: list[Part] = field(default_factory=list)
    """The committed parts that count, sorted by (unit, start): no two overlap."""
    ranges: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    """unit -> committed half-open index ranges, sorted."""
    finished: set[int] = field(default_factory=set)
    """Units whose every image is committed."""
    debris: list[str] = field(default_factory=list)
    """URIs of files that do not count: half pairs, overlapped parts, crash temporaries."""

    def skip(self, unit: int) -> list[tuple[int, int]]:
        return self.ranges.get(unit, [])

    @property
    def committed_images(self) -> int:
        return sum(b - a for rs in self.ranges.values() for a, b in rs)

    def files(self, output: str, table: str) -> list[str]:
        """URIs of ``table``'s (``images`` or ``detections``) files that count, in part order."""
        return [storage.join(output, table, p.name) for p in self.parts]


def _resolve_overlaps(parts: list[Part]) -> tuple[list[Part], list[Part]]:
    """(kept, overlapped): the newest generation wins, then the earliest start; kept never overlap."""
    if len(parts) == 1:  # the common case, once per unit
        return parts, []
    kept: list[Part] = []
    overlapped: list[Part] = []
    for part in sorted(parts, key=lambda p: (-p.generation, p.start, p.stop)):
        if any(part.start < k.stop and k.start < part.stop for k in kept):
            overlapped.append(part)
        else:
            kept.append(part)
    return sorted(kept, key=lambda p: p.start), overlapped


def read_commit_log(output: str) -> CommitLog:
    """The commit log of ``output`` from the listings of images/ and detections/ alone."""
    log = CommitLog()
    listed = {table: storage.list_names(storage.join(output, table), hidden=True) for table in TABLES}
    for table, names in listed.items():
        log.debris += [storage.join(output, table, n) for n in names if is_temporary(n)]
    # Only the names of both tables are parts: parse each once, from one table (200k+ parts: docs/detect.md).
    pairs = set(listed["images"]) & set(listed["detections"])
    parts = {n: p for n in pairs if (p := parse_part(n)) is not None}
    for table, names in listed.items():
        log.debris += [storage.join(output, table, n) for n in sorted(names)
                       if n not in parts and parse_part(n) is not None]
    by_unit: dict[int, list[Part]] = defaultdict(list)
    for part in parts.values():
        by_unit[part.unit].append(part)
    for unit in sorted(by_unit):
        kept, overlapped = _resolve_overlaps(by_unit[unit])
        for part in overlapped:
            logger.warning("%s: part %s overlaps a newer or earlier one of unit %d; it does not count", output,
                           part.name, unit)
            log.debris += [storage.join(output, table, part.name) for table in TABLES]
        log.parts += kept
        log.ranges[unit] = [(p.start, p.stop) for p in kept]
        if kept and kept[-1].last and sum(p.stop - p.start for p in kept) == kept[-1].stop:
            log.finished.add(unit)
    return log
