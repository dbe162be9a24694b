"""`detbatch report` on a synthetic, contract-conformant 1M-image detect output: wall time and peak memory.

    .venv/bin/python benchmarks/report_speed.py [--images 1000000] [--workdir /tmp/report-bench]

The output is written once (kept in WORKDIR and reused): parts named and laid out as detect's sink names
them (sink.part_name, DETECTIONS_SCHEMA / IMAGES_SCHEMA, a run.json), PARTS_IMAGES images per part, ~7
detections per image over 80 categories skewed like COCO's, 0.1% of the images in error with three
reasons. Image URIs point at 100 real 640x480 PNGs in WORKDIR (repeated), so that the report's thumbnails
are real reads and encodes. The report then runs in a fresh process (the CLI, as a user runs it); its peak
RSS is the child's ru_maxrss.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# One part per 1,000 images: a detect call of rows_per_file 1000 (a GPU run's order of magnitude).
PARTS_IMAGES = 1000
REAL_IMAGES = 100


def write_output(out: Path, images: int, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from detbatch.detect.sink import DETECTIONS_SCHEMA, IMAGES_SCHEMA, part_name

    rng = np.random.default_rng(seed)
    pictures = out / "pictures"
    pictures.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:480, 0:640]
    for i in range(REAL_IMAGES):
        pixels = np.stack([(xx + 7 * i) % 256, (yy + 3 * i) % 256, np.full_like(xx, 40 * i % 256)], -1).astype(np.uint8)
        Image.fromarray(pixels).save(pictures / f"{i:03d}.png")
    names = np.array([f"category-{c:02d}" for c in range(80)])
    weights = 1.0 / np.arange(1, 81) ** 0.8  # skewed: a few categories hold most detections, like COCO's
    weights /= weights.sum()
    reasons = np.array(["cannot identify image file", "truncated image", "file vanished after listing"])
    for folder in ("images", "detections"):
        (out / "run" / folder).mkdir(parents=True, exist_ok=True)
    totals = {"images_ok": 0, "images_error": 0, "detections": 0}
    for unit, start in enumerate(range(0, images, PARTS_IMAGES)):
        n = min(PARTS_IMAGES, images - start)
        ids = rng.integers(0, 2**63 - 1, n, dtype=np.int64)
        uris = np.array([f"{pictures}/{(start + k) % REAL_IMAGES:03d}.png" for k in range(n)])
        error = rng.random(n) < 0.001
        counts = np.where(error, 0, rng.poisson(7, n)).astype(np.int32)
        d = int(counts.sum())
        owner = np.repeat(np.arange(n), counts)
        x0, y0 = rng.uniform(0, 600, d), rng.uniform(0, 440, d)
        cats = rng.choice(80, d, p=weights)
        detections = pa.table({
            "image_id": ids[owner], "uri": uris[owner], "category_id": (cats + 1).astype(np.int32),
            "category": names[cats], "score": rng.uniform(0.05, 1, d).astype(np.float32),
            "x_min": x0.astype(np.float32), "y_min": y0.astype(np.float32),
            "x_max": (x0 + rng.uniform(5, 40, d)).astype(np.float32), "y_max": (y0 + rng.uniform(5, 40, d)).astype(np.float32),
        }, schema=DETECTIONS_SCHEMA)  # fmt: skip
        table = pa.table({
            "image_id": ids, "uri": uris, "width": np.where(error, 0, 640).astype(np.int32),
            "height": np.where(error, 0, 480).astype(np.int32), "num_detections": counts,
            "status": np.where(error, "error", "ok"),
            "error": pa.array([f"{u}: {r}" if e else None for u, r, e in zip(uris, reasons[ids % 3], error)], pa.string()),
        }, schema=IMAGES_SCHEMA)  # fmt: skip
        name = part_name(unit, 0, n, True, 1)
        pq.write_table(detections, out / "run" / "detections" / name)  # detections first, images commit
        pq.write_table(table, out / "run" / "images" / name)
        totals["images_ok"] += int((~error).sum())
        totals["images_error"] += int(error.sum())
        totals["detections"] += d
    run = {"input": {"uri": str(pictures), "root": str(pictures), "kind": "images", "manifest": None},
           "model": {"name": "synthetic", "weights": "none", "device": "none"}, "counts": totals,
           "wall_seconds": 0.0, "images_per_second": 0.0, "config": {}}
    (out / "run" / "run.json").write_text(json.dumps(run, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--workdir", default="/tmp/report-bench")
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    work = Path(args.workdir) / f"{args.images}"
    if not (work / "run" / "run.json").exists():
        started = time.perf_counter()
        write_output(work, args.images)
        print(f"wrote the output: {time.perf_counter() - started:.1f} s", flush=True)
    report = work / "report"
    command = [str(Path(sys.executable).with_name("detbatch")), "report", "--detections", str(work / "run"),
               "--out", str(report), "--samples", str(args.samples)]
    started = time.perf_counter()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    if status:
        raise SystemExit(f"report failed: status {status}")
    run_bytes = sum(f.stat().st_size for f in (work / "run").rglob("*.parquet"))
    print(json.dumps({
        "images": args.images, "parts": len(list((work / "run" / "images").iterdir())),
        "parquet_mib": round(run_bytes / 2**20, 1), "report_wall_s": round(wall, 2),
        "report_cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "report_peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "index_html_kib": round((report / "index.html").stat().st_size / 1024, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
