"""``detbatch filter``: an existing detect output cut to score thresholds, without rerunning the model
(docs/evaluate.md, "Post-filtering an output").

The thresholds are detect's own (:mod:`detbatch.detect.thresholds`: one score, or a ``thresholds.json`` of
``detbatch evaluate``). The new output has detect's layout and commit protocol: each committed part of the
source (:func:`~detbatch.detect.sink.read_commit_log`) becomes a part of the same name, its detections
file first and its images file (``num_detections`` recounted) second, so a crash leaves only half pairs,
which no reader counts, and a rerun of the same command finishes the parts not yet committed.
``OUT/filter.json`` (written first) says what is being filtered, ``OUT/run.json`` (last) that it is done.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from detbatch import storage
from detbatch.config import ConfigError
from detbatch.detect.thresholds import ScoreThresholds, parse_score_threshold
from detbatch.errors import InputError

logger = logging.getLogger(__name__)

FILTER_FILE = "filter.json"


@dataclass(frozen=True)
class FilterSummary:
    out: str
    parts: int
    parts_resumed: int
    detections_in: int
    detections_kept: int

    def line(self) -> str:
        return (f"filter: {self.detections_kept:,} of {self.detections_in:,} detections kept in {self.parts} parts "
                f"({self.parts_resumed} committed by an earlier run) -> {self.out}")


def _json(uri: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_text(uri))
    except FileNotFoundError:
        return None


def _check_out(detections: str, out: str, wanted: dict[str, Any]) -> None:
    """Refuse an ``out`` that is the source, holds it, or holds anything but this same filter's output."""
    a, b = (storage.resolve(u)[1].rstrip("/") for u in (detections, out))
    if storage.protocol_of(detections) == storage.protocol_of(out) and (a == b or a.startswith(b + "/") or b.startswith(a + "/")):
        raise ConfigError(f"--out {out} overlaps --detections {detections}; give a new folder for the filtered output")
    started = _json(storage.join(out, FILTER_FILE))
    if started is not None and started != wanted:
        raise ConfigError(f"{out} holds another filtering ({started}); use another --out")
    if started is None and storage.list_names(out):
        raise ConfigError(f"{out} is not empty and holds no filtered output; choose an empty --out")


def _parquet(table: Any) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _filter_part(detections: Any, images: Any, thresholds: ScoreThresholds) -> tuple[Any, Any]:
    """The part's detections that ``thresholds`` keep, and its images with ``num_detections`` recounted."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keep = thresholds.keep(detections.column("category_id").to_numpy(), detections.column("score").to_numpy())
    kept = detections.filter(pa.array(keep))
    per_uri = kept.group_by("uri").aggregate([([], "count_all")])
    at = pc.index_in(images.column("uri"), value_set=per_uri.column("uri"))
    counts = pc.fill_null(pc.take(per_uri.column("count_all"), at), 0).cast(pa.int32())
    column = images.schema.get_field_index("num_detections")
    return kept, images.set_column(column, images.schema.field(column), counts)


def filter_run(detections: str, score_threshold: float | str, out: str) -> FilterSummary:
    """Write to ``out`` the detect output ``detections`` with only the boxes ``score_threshold`` keeps.

    Raises :class:`InputError` for a source that is no finished detect output, :class:`ConfigError` for an
    ``out`` that overlaps it or holds something else.
    """
    import pyarrow.parquet as pq

    from detbatch.detect.sink import DETECTIONS_SCHEMA, IMAGES_SCHEMA, read_commit_log

    thresholds = parse_score_threshold(score_threshold)
    source_run = _json(storage.join(detections, "run.json"))
    if source_run is None:
        raise InputError(f"{detections}: no run.json, so not a finished detect output; finish the detect run first")
    wanted = {"detections": detections, "score_threshold": thresholds.fingerprint()}
    _check_out(detections, out, wanted)
    before = ScoreThresholds.from_fingerprint((source_run.get("fingerprint") or {}).get("score_threshold", 0.0))
    looser = sorted(c for c, t in thresholds.per_category.items() if t < before.per_category.get(c, before.default or 0.0))
    if looser or (thresholds.default or 0.0) < (before.default or 0.0):
        logger.warning("%s was made with higher thresholds than some of %s (categories %s): those keep only what "
                       "detect kept", detections, score_threshold, looser or "without their own")
    storage.write_text(storage.join(out, FILTER_FILE), json.dumps(wanted, indent=2))

    log = read_commit_log(detections)
    done = {p.name for p in read_commit_log(out).parts}
    totals = {"images_ok": 0, "images_error": 0, "detections": 0}
    kept_total = seen = 0
    for part in log.parts:
        read = {t: storage.join(detections, t, part.name) for t in ("detections", "images")}
        written = {t: storage.join(out, t, part.name) for t in ("detections", "images")}
        if part.name in done:
            images = pq.read_table(io.BytesIO(storage.read_bytes(written["images"])), schema=IMAGES_SCHEMA)
            seen += pq.read_metadata(io.BytesIO(storage.read_bytes(read["detections"]))).num_rows
        else:
            source = pq.read_table(io.BytesIO(storage.read_bytes(read["detections"])), schema=DETECTIONS_SCHEMA)
            kept, images = _filter_part(source, pq.read_table(io.BytesIO(storage.read_bytes(read["images"])), schema=IMAGES_SCHEMA), thresholds)
            storage.write_bytes(written["detections"], _parquet(kept))
            storage.write_bytes(written["images"], _parquet(images))  # the commit, as detect's sink
            seen += source.num_rows
        ok = int(np.sum(np.asarray(images.column("status").to_pylist()) == "ok"))
        totals["images_ok"] += ok
        totals["images_error"] += images.num_rows - ok
        kept_total += int(np.sum(images.column("num_detections").to_numpy()))
    totals["detections"] = kept_total
    run = dict(source_run)
    run["counts"] = totals
    run["fingerprint"] = {**(source_run.get("fingerprint") or {}), "score_threshold": thresholds.fingerprint()}
    run["filter"] = {**wanted, "detections_in": seen}
    storage.write_text(storage.join(out, "run.json"), json.dumps(run, indent=2))
    return FilterSummary(out, len(log.parts), len(done & {p.name for p in log.parts}), seen, kept_total)
