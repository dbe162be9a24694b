"""Writing detect outputs (the contract of issue 2) for evaluation tests."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from detbatch import storage
from detbatch.metrics import Detections


def write_detect_output(
    run: str,
    dt: Detections,
    images: list[dict[str, Any]],
    *,
    input_uri: str,
    manifest: str | None,
    files: int = 3,
    seed: int = 0,
    row_group_size: int | None = None,
) -> None:
    """Write ``run/detections/*.parquet``, ``run/images/*.parquet`` and ``run/run.json``.

    Args:
        dt: detections; ``image_id`` is the run's image id (ground-truth id with a manifest, else any).
        images: run images: ``{"image_id", "uri", "width", "height"}`` (``"status"`` optional).
        files: number of detection files; rows are shuffled and dealt out at random, so an image's
            detections may span files.
    """
    rng = np.random.default_rng(seed)
    uri_of = {im["image_id"]: im["uri"] for im in images}
    order = rng.permutation(len(dt))
    cats = dt.category_id[order]
    table = pa.table({
        "image_id": pa.array(dt.image_id[order], pa.int64()),
        "uri": pa.array([uri_of.get(int(i), "") for i in dt.image_id[order]], pa.string()),
        "category_id": pa.array(cats, pa.int32()),
        "category": pa.array([f"c{c}" for c in cats], pa.string()),
        "score": pa.array(dt.score[order], pa.float32()),
        **{c: pa.array(dt.boxes[order, i], pa.float32()) for i, c in enumerate(("x_min", "y_min", "x_max", "y_max"))},
    })  # fmt: skip
    cuts = np.sort(rng.integers(0, len(dt) + 1, max(files - 1, 0)))
    bounds = [0, *cuts.tolist(), len(dt)]
    for f in range(files):
        _write_parquet(storage.join(run, "detections", f"part-{f:05d}.parquet"), table.slice(bounds[f], bounds[f + 1] - bounds[f]), row_group_size)
    counts = {int(i): int(n) for i, n in zip(*np.unique(dt.image_id, return_counts=True))}
    image_table = pa.table({
        "image_id": pa.array([im["image_id"] for im in images], pa.int64()),
        "uri": pa.array([im["uri"] for im in images], pa.string()),
        "width": pa.array([im.get("width", 640) for im in images], pa.int32()),
        "height": pa.array([im.get("height", 480) for im in images], pa.int32()),
        "num_detections": pa.array([counts.get(im["image_id"], 0) for im in images], pa.int32()),
        "status": pa.array([im.get("status", "ok") for im in images], pa.string()),
        "error": pa.array([""] * len(images), pa.string()),
    })  # fmt: skip
    _write_parquet(storage.join(run, "images", "part-00000.parquet"), image_table, None)
    info = {"input": {"uri": input_uri, "manifest": manifest}, "model": "test"}
    storage.write_text(storage.join(run, "run.json"), json.dumps(info))


def _write_parquet(uri: str, table: pa.Table, row_group_size: int | None) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group_size)
    storage.write_bytes(uri, buf.getvalue())
