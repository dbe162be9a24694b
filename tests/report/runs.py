"""A detect output with known detections, written through the sink (no Ray), for the report's tests."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from detbatch.detect import sink
from detbatch.detect.detector import SCORED_SCHEMA

CATEGORIES = {1: "cat", 2: "dog", 3: "bird", 4: "zebra"}  # zebra: one detection, on one image
ERRORS = {"broken-1.png": "cannot identify image file", "broken-2.png": "cannot identify image file",
          "empty.png": "file is empty"}


@dataclass(frozen=True)
class KnownRun:
    output: str
    images: pa.Table  # the images rows written (ok and error)
    detections: pa.Table  # the detection rows written, committed parts only
    ground_truth: str  # COCO JSON: each detection scoring over 0.6 has its box; one extra (missed) box per image
    evaluation: str
    bad_uris: list[str]


def _png(path: Path, w: int, h: int, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def write_known_run(root: Path, units: tuple[int, ...] = (20, 23), per_part: int = 7, seed: int = 0) -> KnownRun:
    rng = np.random.default_rng(seed)
    (root / "in").mkdir(parents=True)
    output = root / "run"
    rows: list[dict[str, Any]] = []
    bad = iter(ERRORS.items())
    for unit, size in enumerate(units):
        for index in range(size):
            uid = unit * 1000 + index + 1
            w, h = int(rng.integers(40, 90)), int(rng.integers(30, 70))
            error = next(bad, None) if index % 9 == 4 else None
            name = error[0] if error else f"u{unit}-{index:03d}.png"
            uri = str(root / "in" / name)
            if error:
                (root / "in" / name).write_bytes(b"" if name == "empty.png" else b"not a png")
                rows.append({"unit": unit, "index": index, "last": index == size - 1, "uri": uri, "image_id": uid,
                             "width": 0, "height": 0, "status": "error", "error": f"{uri}: {error[1]}",
                             "category_id": [], "category": [], "score": [], "box": []})
                continue
            _png(root / "in" / name, w, h, uid)
            n = int(rng.integers(0, 6))
            cats = rng.choice([1, 2, 3], n).tolist()
            if uid == 1002:
                cats, n = [*cats, 4], n + 1
            x0 = rng.uniform(0, w / 2, n)
            y0 = rng.uniform(0, h / 2, n)
            boxes = np.stack([x0, y0, x0 + rng.uniform(4, w / 2, n), y0 + rng.uniform(4, h / 2, n)], 1)
            rows.append({"unit": unit, "index": index, "last": index == size - 1, "uri": uri, "image_id": uid,
                         "width": w, "height": h, "status": "ok", "error": None, "category_id": cats,
                         "category": [CATEGORIES[c] for c in cats],
                         "score": np.round(rng.uniform(0.05, 1.0, n), 3).tolist(),
                         "box": boxes.astype(np.float32).ravel().tolist()})
    scored = pa.Table.from_pylist(rows, schema=SCORED_SCHEMA)
    for begin in range(0, scored.num_rows, per_part):
        sink.write_parts(scored.slice(begin, per_part), str(output))
    # Debris of an interrupted attempt: a detections file without its images twin, never to be read.
    debris = pa.Table.from_pylist([{**rows[0], "unit": 7, "index": 0, "category": ["debris"], "category_id": [9],
                                    "score": [0.99], "box": [1.0, 1.0, 5.0, 5.0]}], schema=SCORED_SCHEMA)
    (output / "detections" / sink.part_name(7, 0, 1, True)).write_bytes(
        _parquet(sink.explode_detections(debris)))
    run_info = {"input": {"uri": str(root / "in"), "root": str(root / "in"), "kind": "images",
                          "manifest": str(root / "gt.json")},
                "model": {"name": "tiny_fcos", "weights": "none", "device": "cpu"},
                "config": {"model": {"score_threshold": 0.05}},
                "counts": {}, "wall_seconds": 12.5, "images_per_second": 3.44, "finished_at": "2026-12-01T00:00:00Z"}
    (output / "run.json").write_text(json.dumps(run_info))
    detections = sink.explode_detections(scored)
    ground_truth = _ground_truth(root / "gt.json", scored)
    evaluation = root / "evaluation"
    evaluation.mkdir()
    (evaluation / "metrics.json").write_text(json.dumps({"AP": 0.5, "AP50": 0.75, "per_category": {
        "cat": {"category_id": 1, "AP": 0.4, "AP50": 0.7, "num_gt": 10, "num_detections": 20}}}))
    _png(evaluation / "pr_curves.png", 60, 40, 99)
    return KnownRun(str(output), sink.image_rows(scored), detections, str(root / "gt.json"), str(evaluation),
                    [r["uri"] for r in rows if r["status"] == "error"])


def _ground_truth(path: Path, scored: pa.Table) -> str:
    images, annotations = [], []
    for row in scored.to_pylist():
        if row["status"] != "ok":
            continue
        images.append({"id": row["image_id"], "file_name": row["uri"].rsplit("/", 1)[-1], "width": row["width"],
                       "height": row["height"]})
        boxes = np.array(row["box"], np.float64).reshape(-1, 4)
        for c, s, b in zip(row["category_id"], row["score"], boxes):
            if s > 0.6:
                annotations.append({"image_id": row["image_id"], "category_id": c, "iscrowd": 0,
                                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": 1.0})
        annotations.append({"image_id": row["image_id"], "category_id": 1, "iscrowd": 0,
                            "bbox": [row["width"] - 6.0, row["height"] - 6.0, 5.0, 5.0], "area": 25.0})
    for a in range(len(annotations)):
        annotations[a]["id"] = a + 1
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n} for i, n in CATEGORIES.items()]}
    path.write_text(json.dumps(coco))
    return str(path)


def _parquet(table: pa.Table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()
