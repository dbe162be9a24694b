"""What the diagnostics of issue 15 cost: ``detbatch evaluate`` with plain COCO stats against the stats with
thresholds and the confusion matrix (the default), and with slices too, on the COCO-sized synthetic set of
``eval_speed.py`` (5,000 images, ~330k detections).

    python benchmarks/eval_diagnostics.py [--images 5000] [--repeat 2]

Two views: the library call in this process (match + reduce, then the confusion map), best of
``--repeat``; and end to end, each a fresh process through ``run_evaluate`` (reading the Parquet and the
JSON, writing the outputs), with its wall time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_speed import _load_set, write_dataset  # noqa: E402

END_TO_END = """
import json, sys, time
from detbatch.evaluate import EvaluateConfig, run_evaluate
start = time.perf_counter()
m = run_evaluate(EvaluateConfig(detections=sys.argv[1], ground_truth=sys.argv[2], out=sys.argv[3], **json.loads(sys.argv[4])))
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
print(json.dumps({"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time(), "peak_rss_mib": peak, "AP": m["AP"]}))
"""

VARIANTS = {
    "plain stats": {"diagnostics": False},
    "stats + thresholds + confusion": {},
    "... + slices (num_objects, image_size)": {"slice_by": ["num_objects", "image_size"]},
}


def bench_library(gt_path: Path, run: Path, repeat: int) -> dict[str, float]:
    from detbatch.metrics import Detections, GroundTruth, count_ground_truth, match_images, reduce
    from detbatch.metrics.confusion import confusion_matrix
    from detbatch.metrics.grouping import accumulate_by_category
    from detbatch.metrics.thresholds import accumulate_with_thresholds, combine_with_thresholds, confusion_score_thresholds

    dataset, det = _load_set(gt_path, run)
    gt = GroundTruth.from_coco(dataset)
    dt = Detections(det["image_id"], det["category_id"], det["score"], np.stack([det[c] for c in ("x_min", "y_min", "x_max", "y_max")], 1))
    counts = count_ground_truth(gt)

    def plain() -> None:
        reduce(match_images(gt, dt), gt.category_ids, counts)

    def diagnostics() -> None:
        records = match_images(gt, dt)
        result = combine_with_thresholds(gt.category_ids, counts, accumulate_by_category(records, gt.category_ids, counts, accumulate_with_thresholds))
        confusion_matrix(gt, dt, confusion_score_thresholds(result.category_ids, result.thresholds, None))

    out = {}
    for name, fn in (("plain stats", plain), ("stats + thresholds + confusion", diagnostics)):
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out[name] = min(times)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        gt_path, run, n_gt, n_det = write_dataset(work, args.images)
        print(f"{args.images} images, {n_gt} ground truth, {n_det} detections")
        library = bench_library(gt_path, run, args.repeat)
        print("\nlibrary call (best of %d):" % args.repeat)
        for name, seconds in library.items():
            print(f"  {name:<40} {seconds:6.2f} s  ({seconds / library['plain stats']:.2f}x)")
        print("\nend to end, fresh process each (run_evaluate):")
        base = None
        for name, keys in VARIANTS.items():
            done = subprocess.run([sys.executable, "-c", END_TO_END, str(run), str(gt_path), str(work / "eval"), json.dumps(keys)],
                                  check=True, capture_output=True, text=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            base = base or r["seconds"]
            print(f"  {name:<40} {r['seconds']:6.2f} s  ({r['seconds'] / base:.2f}x)  CPU {r['cpu_seconds']:.2f} s  "
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB  AP {r['AP']:.4f}")


if __name__ == "__main__":
    main()
