"""Speed of `detbatch evaluate` against pycocotools (and faster-coco-eval), side by side in one run.

    python benchmarks/eval_speed.py                       # COCO-sized: 5,000 images, ~330k detections
    python benchmarks/eval_speed.py --images 1000000      # distributed run on a local Ray: time, peak RSS

The COCO-sized run measures, on the same synthetic set:
- the library call: pycocotools ``COCOeval`` (from in-memory dicts), faster-coco-eval, and
  ``detbatch.metrics.evaluate_coco`` (from the same dicts and arrays), with the largest stat difference;
- end to end from files, each a fresh process: a pycocotools script that reads the Parquet and the JSON and
  writes its stats, and ``detbatch evaluate`` (the CLI when it has the command, else the same call
  through ``python -c``), which also writes report.md and pr_curves.png.

A large run (``--images`` above 20,000) writes the set in chunks (no process ever holds all detections),
then evaluates it in a fresh process on a local Ray with ``use_ray=True`` and reports the wall time and the
peak RSS of the driver and of the busiest Ray worker.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_CATEGORIES = 80
GT_PER_IMAGE = 6.8  # COCO val2017: 36,781 boxes / 5,000 images (34k here after Poisson draws)
DETS_PER_IMAGE = 66  # ~330k detections for 5,000 images, a typical detector at score >= 0.05
CHUNK_IMAGES = 5000
LARGE = 20_000  # above this many images: the distributed run only (pycocotools would take hours)


def synthetic_chunk(seed: int, first_image_id: int, n_images: int) -> tuple[dict, dict, dict]:
    """One chunk of a COCO-like set: (images, annotation columns, detection columns).

    Box sizes log-uniform 4..400 px, categories skewed like COCO's (the first ~ a quarter of all boxes),
    1% crowd, ``area`` below w*h as a segmentation's is; ~2.5 jittered detections per ground truth (15%
    with a wrong class), the rest background boxes with low scores.
    """
    rng = np.random.default_rng(seed)
    image_ids = np.arange(first_image_id, first_image_id + n_images, dtype=np.int64)
    width = rng.choice([640, 640, 500, 480], n_images)
    height = rng.choice([480, 427, 640, 375], n_images)
    freq = 1.0 / np.arange(1, N_CATEGORIES + 1) ** 0.9
    freq /= freq.sum()
    gi = np.repeat(np.arange(n_images), rng.poisson(GT_PER_IMAGE, n_images))
    g = len(gi)
    gw = np.minimum(np.exp(rng.uniform(np.log(4), np.log(400), g)), width[gi] - 1)
    gh = np.minimum(gw * np.exp(rng.normal(0, 0.4, g)), height[gi] - 1)
    gx, gy = rng.random(g) * (width[gi] - gw), rng.random(g) * (height[gi] - gh)
    gcat = rng.choice(N_CATEGORIES, g, p=freq) + 1
    gt = {
        "image_id": image_ids[gi], "category_id": gcat,
        "bbox": np.stack([gx, gy, gw, gh], 1).round(2), "area": (gw * gh * rng.uniform(0.4, 0.9, g)).round(2),
        "iscrowd": (rng.random(g) < 0.01).astype(np.int64),
    }  # fmt: skip
    ti = np.repeat(np.arange(g), rng.poisson(2.5, g))
    t = len(ti)
    jitter = rng.normal(0, 0.1, (t, 4)) * np.stack([gw[ti], gh[ti], gw[ti], gh[ti]], 1)
    tbox = np.stack([gx[ti], gy[ti], gx[ti] + gw[ti], gy[ti] + gh[ti]], 1) + jitter
    tcat = np.where(rng.random(t) < 0.85, gcat[ti], rng.choice(N_CATEGORIES, t, p=freq) + 1)
    bi = np.repeat(np.arange(n_images), np.maximum(rng.poisson(DETS_PER_IMAGE, n_images) - np.bincount(gi[ti], minlength=n_images), 0))
    b = len(bi)
    bw = np.exp(rng.uniform(np.log(4), np.log(300), b))
    bh = bw * np.exp(rng.normal(0, 0.4, b))
    bx, by = rng.random(b) * np.maximum(width[bi] - bw, 1), rng.random(b) * np.maximum(height[bi] - bh, 1)
    boxes = np.concatenate([tbox, np.stack([bx, by, bx + bw, by + bh], 1)]).astype(np.float32)
    det = {
        "image_id": image_ids[np.concatenate([gi[ti], bi])],
        "category_id": np.concatenate([tcat, rng.choice(N_CATEGORIES, b, p=freq) + 1]).astype(np.int32),
        "score": np.concatenate([rng.beta(4, 2, t), rng.beta(1.2, 6, b)]).astype(np.float32),
        **{c: boxes[:, i] for i, c in enumerate(("x_min", "y_min", "x_max", "y_max"))},
    }  # fmt: skip
    return {"image_id": image_ids, "width": width, "height": height}, gt, det


def _coco_lists(images: dict, gt: dict, first_ann_id: int) -> tuple[list, list]:
    ims = [{"id": int(i), "file_name": f"{i:012d}.jpg", "width": int(w), "height": int(h)}
           for i, w, h in zip(images["image_id"], images["width"], images["height"])]  # fmt: skip
    anns = [
        {"id": first_ann_id + n, "image_id": int(i), "category_id": int(c), "bbox": b, "area": float(a), "iscrowd": int(z)}
        for n, (i, c, b, a, z) in enumerate(zip(gt["image_id"], gt["category_id"], gt["bbox"].tolist(), gt["area"], gt["iscrowd"]))
    ]  # fmt: skip
    return ims, anns


CATEGORIES = [{"id": c, "name": f"class_{c:02d}", "supercategory": "thing"} for c in range(1, N_CATEGORIES + 1)]


def write_dataset(root: Path, n_images: int, files_per_chunk: int = 4) -> tuple[Path, Path, int, int]:
    """Write ``root/gt.json`` and a detect output ``root/run`` chunk by chunk; (gt, run, #gt, #dets)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = root / "run"
    (run / "detections").mkdir(parents=True, exist_ok=True)
    (run / "images").mkdir(parents=True, exist_ok=True)
    n_gt = n_det = 0
    with open(root / "gt_images.part", "w") as fi, open(root / "gt_anns.part", "w") as fa:
        for chunk, first in enumerate(range(0, n_images, CHUNK_IMAGES)):
            images, gt, det = synthetic_chunk(chunk, first + 1, min(CHUNK_IMAGES, n_images - first))
            ims, anns = _coco_lists(images, gt, n_gt + 1)
            for f, items in ((fi, ims), (fa, anns)):
                text = json.dumps(items)[1:-1]
                if text:
                    f.write(("," if f.tell() else "") + text)
            n_gt += len(anns)
            n = len(det["image_id"])
            n_det += n
            table = pa.table({
                "image_id": det["image_id"], "uri": pa.array([f"{i:012d}.jpg" for i in det["image_id"]]).dictionary_encode(),
                "category_id": det["category_id"], "category": pa.array([f"class_{c:02d}" for c in det["category_id"]]).dictionary_encode(),
                "score": det["score"], **{c: det[c] for c in ("x_min", "y_min", "x_max", "y_max")},
            })  # fmt: skip
            for p, lo in enumerate(range(0, n, -(-n // files_per_chunk))):
                pq.write_table(table.slice(lo, -(-n // files_per_chunk)), run / "detections" / f"part-{chunk:05d}-{p}.parquet")
            counts = np.bincount(det["image_id"] - first - 1, minlength=len(images["image_id"]))
            pq.write_table(pa.table({
                "image_id": images["image_id"], "uri": [f"{i:012d}.jpg" for i in images["image_id"]],
                "width": images["width"].astype(np.int32), "height": images["height"].astype(np.int32),
                "num_detections": counts.astype(np.int32), "status": ["ok"] * len(counts), "error": [""] * len(counts),
            }), run / "images" / f"part-{chunk:05d}.parquet")  # fmt: skip
    gt_path = root / "gt.json"
    with open(gt_path, "w") as out:
        out.write('{"info": {"description": "detbatch synthetic"}, "categories": ' + json.dumps(CATEGORIES) + ', "images": [')
        for part in ("gt_images.part", "gt_anns.part"):
            with open(root / part) as f:
                shutil.copyfileobj(f, out, 1 << 24)
            if part == "gt_images.part":
                out.write('], "annotations": [')
            (root / part).unlink()
        out.write("]}")
    (run / "run.json").write_text(json.dumps({"input": {"uri": "synthetic://images", "manifest": str(gt_path)}}))
    return gt_path, run, n_gt, n_det


def _load_set(gt_path: Path, run: Path) -> tuple[dict, dict]:
    import pyarrow.dataset as pads

    table = pads.dataset(run / "detections", format="parquet").to_table()
    return json.loads(gt_path.read_text()), {c: table.column(c).to_numpy() for c in ("image_id", "category_id", "score", "x_min", "y_min", "x_max", "y_max")}


def _results(det: dict) -> list[dict]:
    """COCO results in detbatch's tie order, bbox computed in float64 from the float32 corners."""
    order = np.lexsort((det["y_max"], det["x_max"], det["y_min"], det["x_min"], -det["score"], det["category_id"], det["image_id"]))
    x1, y1, x2, y2 = (det[c][order].astype(np.float64) for c in ("x_min", "y_min", "x_max", "y_max"))
    return [
        {"image_id": i, "category_id": c, "bbox": [a, b, w, h], "score": s}
        for i, c, a, b, w, h, s in zip(det["image_id"][order].tolist(), det["category_id"][order].tolist(), x1.tolist(),
                                       y1.tolist(), (x2 - x1).tolist(), (y2 - y1).tolist(), det["score"][order].astype(np.float64).tolist())
    ]  # fmt: skip


def bench_library(dataset: dict, det: dict) -> dict:
    """Seconds of each library call on in-memory inputs, and stats."""
    import copy

    from detbatch.metrics import Detections, GroundTruth, evaluate_coco

    out = {}
    results = _results(det)
    for name, module in (("pycocotools", "pycocotools"), ("faster-coco-eval", "faster_coco_eval")):
        gt_dict, res = copy.deepcopy(dataset), copy.deepcopy(results)  # both libraries modify their inputs
        start, cpu = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(io.StringIO()):
            if module == "pycocotools":
                from pycocotools.coco import COCO
                from pycocotools.cocoeval import COCOeval as Eval
            else:
                from faster_coco_eval import COCO, COCOeval_faster as Eval
            gt = COCO()
            gt.dataset = gt_dict
            gt.createIndex()
            ev = Eval(gt, gt.loadRes(res), "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out[name] = (time.perf_counter() - start, time.process_time() - cpu, np.asarray(ev.stats[:12], dtype=np.float64))
    start, cpu = time.perf_counter(), time.process_time()
    boxes = np.stack([det[c] for c in ("x_min", "y_min", "x_max", "y_max")], axis=1)
    result = evaluate_coco(GroundTruth.from_coco(dataset), Detections(det["image_id"], det["category_id"], det["score"], boxes))
    out["detbatch"] = (time.perf_counter() - start, time.process_time() - cpu, result.stats)
    return out


PYCOCOTOOLS_SCRIPT = """
import contextlib, io, json, sys
sys.path.insert(0, {bench_dir!r})
from eval_speed import _results
import numpy as np, pyarrow.dataset as pads
{imports}
gt_path, run, out = sys.argv[1:4]
t = pads.dataset(run + "/detections", format="parquet").to_table()
det = {{c: t.column(c).to_numpy() for c in ("image_id", "category_id", "score", "x_min", "y_min", "x_max", "y_max")}}
with contextlib.redirect_stdout(io.StringIO()) as log:
    gt = COCO(gt_path)
    ev = Eval(gt, gt.loadRes(_results(det)), "bbox")
    ev.evaluate(); ev.accumulate(); ev.summarize()
print(log.getvalue())
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
json.dump({{"stats": [float(s) for s in ev.stats[:12]], "peak_rss_mib": hwm / 1024}}, open(out, "w"))
"""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(cmd: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall seconds, CPU seconds (user + system, of the process and its waited children), result."""
    start, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{cmd[:3]} failed:\n{done.stderr[-3000:]}")
    return elapsed, _children_cpu() - cpu, done


def _detbatch_cli() -> list[str]:
    """``detbatch evaluate`` if the CLI has it, else the library call through ``python -c``."""
    exe = Path(sys.executable).with_name("detbatch")
    if exe.exists() and subprocess.run([str(exe), "evaluate", "--help"], capture_output=True).returncode == 0:
        return [str(exe), "evaluate"]
    code = (
        "import argparse, sys; from detbatch.evaluate import EvaluateConfig, run_evaluate, summary_lines;"
        "p = argparse.ArgumentParser(); [p.add_argument(f) for f in ('--detections', '--ground-truth', '--out')];"
        "a = p.parse_args(); print('\\n'.join(summary_lines(run_evaluate(EvaluateConfig(detections=a.detections,"
        " ground_truth=a.ground_truth, out=a.out)))))"
    )
    return [sys.executable, "-c", code]


def bench_end_to_end(gt_path: Path, run: Path, work: Path) -> dict:
    out = {}
    bench_dir = str(Path(__file__).resolve().parent)
    for name, imports in (
        ("pycocotools", "from pycocotools.coco import COCO; from pycocotools.cocoeval import COCOeval as Eval"),
        ("faster-coco-eval", "from faster_coco_eval import COCO, COCOeval_faster as Eval"),
    ):
        script = PYCOCOTOOLS_SCRIPT.format(bench_dir=bench_dir, imports=imports)
        seconds, cpu, _ = _timed([sys.executable, "-c", script, str(gt_path), str(run), str(work / f"{name}.json")])
        result = json.loads((work / f"{name}.json").read_text())
        out[name] = (seconds, cpu, np.array(result["stats"]), result["peak_rss_mib"])
    cli = _detbatch_cli()
    seconds, cpu, _ = _timed([*cli, "--detections", str(run), "--ground-truth", str(gt_path), "--out", str(work / "eval")])
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    from detbatch.metrics import STAT_KEYS

    out["detbatch" + (" (CLI)" if "evaluate" in cli else " (python -c)")] = (
        seconds, cpu, np.array([metrics[k] for k in STAT_KEYS]), metrics["execution"]["peak_rss_mib_driver"],
    )  # fmt: skip
    return out


LARGE_SCRIPT = """
import json, logging, sys, time
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
import ray
ray.init(address="local", num_cpus={cpus}, include_dashboard=False, logging_level=logging.WARNING)
from detbatch.evaluate import EvaluateConfig, run_evaluate, summary_lines
start = time.perf_counter()
m = run_evaluate(EvaluateConfig(detections=sys.argv[1], ground_truth=sys.argv[2], out=sys.argv[3], use_ray=True))
m["execution"]["wall_s_in_process"] = time.perf_counter() - start
m["execution"]["peak_rss_mib_driver_at_exit"] = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
print(json.dumps(m["execution"]))
print("\\n".join(summary_lines(m)))
"""


def bench_large(gt_path: Path, run: Path, work: Path, cpus: int) -> dict:
    seconds, _, done = _timed([sys.executable, "-c", LARGE_SCRIPT.format(cpus=cpus), str(run), str(gt_path), str(work / "eval")])
    lines = done.stdout.strip().splitlines()
    execution = json.loads(next(l for l in lines if l.startswith("{")))
    return {"seconds": seconds, "execution": execution, "summary": [l for l in lines if l.startswith(" Average")]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the data here (default: a temp dir)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="Ray CPUs for a large run")
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="eval_speed-"))
    work.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    stamp = work / "dataset.json"
    if stamp.exists() and json.loads(stamp.read_text())["images"] == args.images:  # --workdir reused
        gt_path, run, n_gt, n_det = (lambda d: (Path(d["gt"]), Path(d["run"]), d["gt_boxes"], d["detections"]))(json.loads(stamp.read_text()))
    else:
        gt_path, run, n_gt, n_det = write_dataset(work, args.images)
        stamp.write_text(json.dumps({"images": args.images, "gt": str(gt_path), "run": str(run), "gt_boxes": n_gt, "detections": n_det}))
    size = sum(f.stat().st_size for f in (run / "detections").glob("*.parquet"))
    print(f"data: {args.images:,} images, {n_gt:,} ground truth, {n_det:,} detections, "
          f"{size / 2**20:.0f} MiB Parquet, GT {gt_path.stat().st_size / 2**20:.0f} MiB; written in {time.perf_counter() - start:.0f} s ({work})")  # fmt: skip

    if args.images > LARGE:
        r = bench_large(gt_path, run, work, args.cpus)
        e = r["execution"]
        print(f"\ndetbatch evaluate on Ray ({args.cpus} CPUs): {r['seconds']:.0f} s end to end; "
              f"{e['read_tasks']} read tasks, {e['buckets']} buckets, {e['category_shards']} shards; peak RSS: driver "
              f"{e['peak_rss_mib_driver_at_exit']:.0f} MiB, busiest worker {e['peak_rss_mib_worker']:.0f} MiB")  # fmt: skip
        for name, stage in e["stages"].items():
            print(f"  {name:<7} {stage['tasks']:4d} tasks, {stage['task_seconds']:7.1f} task-seconds "
                  f"({stage['task_cpu_seconds']:.1f} CPU), peak RSS {stage['peak_rss_mib']:.0f} MiB "
                  f"(private, per task: {stage['peak_private_mib']:.0f} MiB)")  # fmt: skip
        print(f"  driver: {e['seconds']:.0f} s to the metrics in process, {e['wall_s_in_process']:.0f} s with the report")
        print("\n".join(r["summary"]))
        return

    load_before = os.getloadavg()[0]
    dataset, det = _load_set(gt_path, run)
    lib = bench_library(dataset, det)
    del dataset, det
    e2e = bench_end_to_end(gt_path, run, work)
    ref = lib["pycocotools"][2]
    print(f"\nload average before the comparisons: {load_before:.1f} (machine with {os.cpu_count()} CPUs)")
    print("\nlibrary call (in memory)    wall s  vs pycocotools   CPU s  vs pycocotools   max |stat diff|")
    for name, (sec, cpu, stats) in lib.items():
        print(f"  {name:<25} {sec:7.2f} {lib['pycocotools'][0] / sec:8.1f}x      {cpu:7.2f} {lib['pycocotools'][1] / cpu:8.1f}x"
              f"        {np.abs(stats - ref).max():.1e}")  # fmt: skip
    print("\nend to end (fresh process)  wall s  vs pycocotools   CPU s  vs pycocotools   max |stat diff|   peak RSS MiB")
    for name, (sec, cpu, stats, rss) in e2e.items():
        print(f"  {name:<25} {sec:7.2f} {e2e['pycocotools'][0] / sec:8.1f}x      {cpu:7.2f} {e2e['pycocotools'][1] / cpu:8.1f}x"
              f"        {np.abs(stats - ref).max():.1e}       {rss:8.0f}")  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
