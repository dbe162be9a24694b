"""What the diagnostics of issue 15 cost: ``detbatch evaluate`` with plain COCO stats against the stats with
every diagnostic (thresholds, confusion matrix, TIDE error breakdown: the default), and with slices too, on
the synthetic sets of ``eval_speed.py``.

    python benchmarks/eval_diagnostics.py [--images 5000] [--repeat 2]
    python benchmarks/eval_diagnostics.py --images 1000000 --workdir /tmp/eb1m --cpus 2   # on a local Ray
    python benchmarks/eval_diagnostics.py --one-category 10   # one category's reduce, 10 copies of the set's records

COCO-sized (5,000 images, ~330k detections), two views: the library call in this process (match + reduce,
then the confusion map), best of ``--repeat``; and end to end, each a fresh process through
``run_evaluate`` (reading the Parquet and the JSON, writing the outputs), with its wall time, CPU time and
peak RSS. Above 20,000 images: plain and all diagnostics end to end on a local Ray (``use_ray=True``), each
a fresh process, with the time and memory of every stage (the data is written once per ``--workdir``).
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
from eval_speed import LARGE, _load_set, write_dataset  # noqa: E402

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
    "stats + thresholds + confusion + TIDE errors": {},
    "... + slices (num_objects, image_size)": {"slice_by": ["num_objects", "image_size"]},
}


def bench_library(gt_path: Path, run: Path, repeat: int) -> dict[str, float]:
    from detbatch.evaluate import EvaluateConfig
    from detbatch.evaluate.metric import metric_for
    from detbatch.metrics import Detections, GroundTruth, count_ground_truth, match_images, reduce
    from detbatch.metrics.grouping import accumulate_by_category

    dataset, det = _load_set(gt_path, run)
    gt = GroundTruth.from_coco(dataset)
    dt = Detections(det["image_id"], det["category_id"], det["score"], np.stack([det[c] for c in ("x_min", "y_min", "x_max", "y_max")], 1))
    counts = count_ground_truth(gt)

    def plain() -> None:
        reduce(match_images(gt, dt), gt.category_ids, counts)

    metric = metric_for(EvaluateConfig())  # the diagnostics as run_evaluate runs them

    def diagnostics() -> None:
        records = metric.match(gt, dt)
        result = metric.combine(gt.category_ids, counts, accumulate_by_category(records, gt.category_ids, counts, metric.accumulate))
        metric.confusion(gt, dt, result)

    out = {}
    for name, fn in (("plain stats", plain), ("stats + thresholds + confusion + TIDE errors", diagnostics)):
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out[name] = min(times)
    return out


def bench_one_category(gt_path: Path, run: Path, copies: int) -> None:
    """The reduce of one large category, as a 1M-image shard's biggest: every record of the set (matched
    with the TIDE codes) relabelled as one category, ``copies`` times over with the image ids shifted, in
    the order a reduce task gets them; the plain accumulation against the diagnostics' (COCO, thresholds,
    TIDE), CPU seconds and peak traced memory (numpy's allocations) of each."""
    import tracemalloc

    from detbatch.evaluate import EvaluateConfig
    from detbatch.evaluate.metric import metric_for
    from detbatch.metrics import Detections, GroundTruth, MatchRecords, count_ground_truth
    from detbatch.metrics.coco_reduce import accumulate_category

    dataset, det = _load_set(gt_path, run)
    gt = GroundTruth.from_coco(dataset)
    dt = Detections(det["image_id"], det["category_id"], det["score"], np.stack([det[c] for c in ("x_min", "y_min", "x_max", "y_max")], 1))
    metric = metric_for(EvaluateConfig())
    records = metric.match(gt, dt)
    shift = int(gt.image_ids.max()) + 1
    one = MatchRecords.concat([
        MatchRecords(np.ones(len(records), np.int64), records.image_id + i * shift, records.rank, records.score, records.tp, records.ignored)
        for i in range(copies)
    ])  # fmt: skip
    num_gt = count_ground_truth(gt).sum(axis=0) * copies
    print(f"one category of {len(one):,} records")
    for name, fn in (("plain stats", accumulate_category), ("thresholds + TIDE errors too", metric.accumulate)):
        tracemalloc.start()
        cpu = time.process_time()
        fn(one, num_gt)
        cpu = time.process_time() - cpu
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"  {name:<30} {cpu:6.2f} CPU-s  peak {peak / 2**20:5.0f} MiB ({peak / len(one):.0f} B per record)")


LARGE_SCRIPT = """
import json, logging, sys, time
import ray
ray.init(address="local", num_cpus=int(sys.argv[5]), include_dashboard=False, logging_level=logging.WARNING)
from detbatch.evaluate import EvaluateConfig, run_evaluate
start, cpu = time.perf_counter(), time.process_time()
m = run_evaluate(EvaluateConfig(detections=sys.argv[1], ground_truth=sys.argv[2], out=sys.argv[3], use_ray=True, **json.loads(sys.argv[4])))
e = m["execution"]
e["wall_s_in_process"] = time.perf_counter() - start
e["driver_cpu_seconds"] = time.process_time() - cpu
e["peak_rss_mib_driver_at_exit"] = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
print(json.dumps({"execution": e, "AP": m["AP"], "errors": "errors" in m}))
"""


def bench_large(work: Path, n_images: int, cpus: int, only: str | None = None) -> None:
    """Plain stats, then all diagnostics (or the ``only`` one: ``plain`` or ``diagnostics``), on a local Ray
    in fresh processes; per stage: tasks, task and CPU seconds, peak memory."""
    stamp = work / "dataset.json"
    if stamp.exists() and json.loads(stamp.read_text())["images"] == n_images:
        d = json.loads(stamp.read_text())
        gt_path, run = Path(d["gt"]), Path(d["run"])
    else:
        gt_path, run, n_gt, n_det = write_dataset(work, n_images)
        stamp.write_text(json.dumps({"images": n_images, "gt": str(gt_path), "run": str(run), "gt_boxes": n_gt, "detections": n_det}))
    for i, (name, keys) in enumerate(list(VARIANTS.items())[:2]):
        if only is not None and only != ("plain", "diagnostics")[i]:
            continue
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", LARGE_SCRIPT, str(run), str(gt_path), str(work / "eval"), json.dumps(keys), str(cpus)],
                              capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{name}: the run failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
        seconds = time.perf_counter() - start
        r = json.loads(done.stdout.strip().splitlines()[-1])
        e = r["execution"]
        task_cpu = sum(stage["task_cpu_seconds"] for stage in e["stages"].values())
        print(f"\n{name}: {seconds:.0f} s end to end, driver CPU {e['driver_cpu_seconds']:.0f} s + task CPU {task_cpu:.0f} s; "
              f"peak RSS driver {e['peak_rss_mib_driver_at_exit']:.0f} MiB, busiest worker {e['peak_rss_mib_worker']:.0f} MiB, "
              f"peak private per task {e['peak_private_mib_task']:.0f} MiB; AP {r['AP']:.4f}")
        for stage, st in e["stages"].items():
            print(f"  {stage:<9} {st['tasks']:4d} tasks, {st['task_seconds']:7.1f} task-s ({st['task_cpu_seconds']:.1f} CPU), "
                  f"peak RSS {st['peak_rss_mib']:.0f} MiB, private per task {st['peak_private_mib']:.0f} MiB "
                  f"(the task's own rise {st['private_rise_mib']:.0f})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="large runs: keep the data here (default: a temp dir)")
    parser.add_argument("--cpus", type=int, default=2, help="Ray CPUs for a large run")
    parser.add_argument("--only", choices=["plain", "diagnostics"], help="large runs: one of the two variants")
    parser.add_argument("--one-category", type=int, metavar="COPIES", help="only the reduce of one category of COPIES x the set's records")
    args = parser.parse_args(argv)
    if args.one_category:
        with tempfile.TemporaryDirectory() as tmp:
            gt_path, run, _, _ = write_dataset(Path(tmp), args.images)
            bench_one_category(gt_path, run, args.one_category)
        return
    if args.images > LARGE:
        work = args.workdir or Path(tempfile.mkdtemp(prefix="eval_diagnostics-"))
        work.mkdir(parents=True, exist_ok=True)
        bench_large(work, args.images, args.cpus, args.only)
        return
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
