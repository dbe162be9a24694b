"""docs/report.png: a report, written and photographed in headless Chromium.

    .venv/bin/python -m tests.report.screenshot RUN OUT_DIR docs/report.png [--ground-truth GT] [--evaluation EVAL]
    .venv/bin/python -m tests.report.screenshot --simulate SYNTH RUN   # a run of a simulated detector, then stop

``--simulate`` writes, through detect's sink, the detect output a decent detector might give on a
``detbatch synth`` set: each object found with probability 0.85 as a jittered box (score 0.5-1), a false box
on a third of the images (score 0.05-0.8), and three inputs in error.
"""

from __future__ import annotations

import argparse

from detbatch.report import write_report
from tests.report.browser import start_chromium


def write_simulated_run(synth: str, run: str, seed: int = 0) -> None:
    import json
    from pathlib import Path

    import numpy as np
    import pyarrow as pa

    from detbatch.detect import sink
    from detbatch.detect.detector import SCORED_SCHEMA

    rng = np.random.default_rng(seed)
    coco = json.loads((Path(synth) / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    rows = []
    for index, im in enumerate(coco["images"]):
        cats, scores, boxes = [], [], []
        for a in by_image.get(im["id"], []):
            if rng.random() < 0.85:
                x, y, w, h = np.array(a["bbox"]) + rng.normal(0, 1.5, 4)
                cats.append(a["category_id"])
                scores.append(rng.uniform(0.5, 1))
                boxes += [x, y, x + w, y + h]
        if rng.random() < 0.33:
            x, y = rng.uniform(0, im["width"] - 30), rng.uniform(0, im["height"] - 30)
            cats.append(int(rng.choice(list(names))))
            scores.append(rng.uniform(0.05, 0.8))
            boxes += [x, y, x + 25, y + 25]
        rows.append({"unit": 0, "index": index, "last": False, "uri": str(Path(synth) / "images" / im["file_name"]),
                     "image_id": im["id"], "width": im["width"], "height": im["height"], "status": "ok", "error": None,
                     "category_id": cats, "category": [names[c] for c in cats], "score": scores, "box": boxes})
    for k, reason in enumerate(["cannot identify image file", "cannot identify image file", "truncated image"]):
        uri = str(Path(synth) / "images" / f"broken-{k}.jpg")
        rows.append({"unit": 0, "index": len(rows), "last": False, "uri": uri, "image_id": 10**9 + k, "width": 0,
                     "height": 0, "status": "error", "error": f"{uri}: {reason}", "category_id": [], "category": [],
                     "score": [], "box": []})
    rows[-1]["last"] = True
    scored = pa.Table.from_pylist(rows, schema=SCORED_SCHEMA)
    for begin in range(0, len(rows), 25):
        sink.write_parts(scored.slice(begin, 25), run)
    ok = sum(r["status"] == "ok" for r in rows)
    info = {"input": {"uri": str(Path(synth) / "images"), "root": str(Path(synth) / "images"), "kind": "images",
                      "manifest": str(Path(synth) / "annotations.json")},
            "model": {"name": "simulated", "weights": "none", "device": "cpu"}, "config": {"model": {"score_threshold": 0.05}},
            "counts": {"images_ok": ok, "images_error": len(rows) - ok, "detections": sum(len(r["score"]) for r in rows)},
            "wall_seconds": 10.0, "images_per_second": round(len(rows) / 10.0, 2)}
    Path(run, "run.json").write_text(json.dumps(info, indent=2))


def main() -> None:
    import sys

    if sys.argv[1:2] == ["--simulate"]:
        write_simulated_run(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("out")
    parser.add_argument("png")
    parser.add_argument("--ground-truth")
    parser.add_argument("--evaluation")
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--threshold", type=float, default=None, help="move the slider here before the shot")
    args = parser.parse_args()
    result = write_report(args.run, args.out, ground_truth=args.ground_truth, evaluation=args.evaluation,
                          samples=args.samples)
    driver = start_chromium(1280, 2300)
    try:
        driver.get("file://" + result.index)
        if args.threshold is not None:
            driver.execute_script("const s = document.getElementById('score'); s.value = arguments[0];"
                                  "s.dispatchEvent(new Event('input'));", args.threshold)
        driver.save_screenshot(args.png)
    finally:
        driver.quit()
    from PIL import Image

    with Image.open(args.png) as shot:  # half the bytes in the repository, still readable
        shot = shot.convert("RGB").resize((1000, round(shot.height * 1000 / shot.width)), Image.LANCZOS)
        shot.quantize(256).save(args.png, optimize=True)


if __name__ == "__main__":
    main()
