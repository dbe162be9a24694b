"""How close `detbatch detect` comes to a bare single-process loop, and how its memory grows.

    .venv/bin/python benchmarks/detect_efficiency.py [--actors 2|1] [--copies 2] [--memory-copies 1 10]
        [--skip-throughput] [--skip-memory]        (needs psutil: pip install -e ".[bench]")

Throughput: the same images (COCO128 × copies), the same model (random init), batch size and torch
thread count, measured side by side in one run:
  - bare: one process, PIL decode + model, no Ray; timed from model construction (its imports of
    torch and torchvision are timed too, and printed as a second ratio);
  - detbatch: `run_detect` on a local Ray started as `detbatch detect` starts it (ray.init and Ray
    Data's per-cluster actors excluded as cluster start-up; listing, the actors' process start,
    torch import and model load, decode, inference, Parquet commits and run.json included), with
    `--actors` detector actors sharing the same total torch threads, `--rows-per-file` images per call.
It prints both images/s and their ratio, and the rate after the first committed file (the pool's
steady state, without its start-up).

Memory: detbatch on COCO128 × 1 and × N; peak RSS of the driver and of the largest Ray worker,
sampled every 0.2 s, and the growth ratio. Each measurement runs in a fresh subprocess so that peaks
do not carry over.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

COCO128 = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128" / "images"


def make_input(root: Path, copies: int) -> Path:
    """COCO128 × copies as symlinks (distinct uris, same bytes)."""
    folder = root / f"x{copies}"
    for c in range(copies):
        sub = folder / f"copy{c:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        for img in sorted(COCO128.glob("*.jpg")):
            link = sub / img.name
            if not link.exists():
                link.symlink_to(img)
    return folder


def run_bare(folder: Path, model: str, batch_size: int, threads: int) -> dict:
    imports_start = time.perf_counter()
    import numpy as np
    import torch
    from PIL import Image

    from detbatch.models import build_detector

    imports = time.perf_counter() - imports_start

    torch.set_num_threads(threads)
    files = sorted(str(p) for p in folder.rglob("*.jpg"))
    start = time.perf_counter()
    detector = build_detector(model, "none", score_threshold=0.05).model
    results = []
    with torch.inference_mode():
        for i in range(0, len(files), batch_size):
            images = [np.asarray(Image.open(f).convert("RGB")) for f in files[i : i + batch_size]]
            tensors = [torch.from_numpy(im).permute(2, 0, 1).float().div_(255) for im in images]
            results += [{k: v.numpy() for k, v in o.items()} for o in detector(tensors)]
    wall = time.perf_counter() - start
    return {"images": len(files), "seconds": wall, "images_per_second": len(files) / wall,
            "import_seconds": imports, "images_per_second_with_imports": len(files) / (wall + imports)}


class PeakSampler:
    """Peak memory of this process and of its largest descendant (the Ray workers), sampled.

    RSS counts the object-store pages a worker has mapped (decoded images it wrote or read), which
    Ray bounds separately (``object_store_memory``). USS counts pages no other process maps, which
    includes object-store pages only this worker touched. Private (``RssAnon`` in /proc/PID/status) is
    the process's own heap and stacks, without any shared-memory (object store) or file pages.
    """

    def __init__(self, interval: float = 0.5):
        import psutil

        self.me = psutil.Process()
        self.driver = self.worker = self.driver_uss = self.worker_uss = self.driver_anon = self.worker_anon = 0
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        from detbatch.evaluate import proc_status_mib

        while not self._stop.is_set():
            mine = self.me.memory_full_info()
            self.driver, self.driver_uss = max(self.driver, mine.rss), max(self.driver_uss, mine.uss)
            self.driver_anon = max(self.driver_anon, proc_status_mib("RssAnon") or 0.0)
            for child in self.me.children(recursive=True):
                try:
                    if "ray::" in " ".join(child.cmdline()[:1]):
                        info = child.memory_full_info()
                        self.worker, self.worker_uss = max(self.worker, info.rss), max(self.worker_uss, info.uss)
                        self.worker_anon = max(self.worker_anon, proc_status_mib("RssAnon", child.pid) or 0.0)
                except psutil.Error:
                    pass
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_detbatch(folder: Path, out: Path, model: str, batch_size: int, threads: int, actors: int, rows_per_file: int) -> dict:
    import pyarrow.parquet as pq
    import ray

    from detbatch.config import DetectConfig, load_config
    from detbatch.detect import run_detect
    from detbatch.runtime import init_ray

    init_ray("local", num_cpus=2)
    _warm_up()
    decode_cpus = 0.5
    config = load_config(
        DetectConfig,
        None,
        {
            "input.uri": str(folder),
            "output.uri": str(out),
            "model.name": model,
            "model.weights": "none",
            "inference.batch_size": batch_size,
            "inference.device": "cpu",
            "inference.min_actors": actors,
            "inference.max_actors": actors,
            "inference.cpus_per_actor": (2 - decode_cpus) / actors,
            "inference.threads_per_actor": max(1, threads // actors),
            "inference.decode_cpus": decode_cpus,
            "output.rows_per_file": rows_per_file,
        },
    )
    with PeakSampler() as peaks:
        wall_start, start = time.time(), time.perf_counter()
        summary = run_detect(config)
        wall = time.perf_counter() - start
    ray.shutdown()
    images = summary.images_ok + summary.images_error
    # Commit times of the image tables: when the first results landed, and the rate after that.
    commits = sorted((p.stat().st_mtime, pq.read_metadata(p).num_rows) for p in (out / "images").glob("*.parquet"))
    first = commits[0][0] - wall_start
    after = sum(n for _, n in commits[1:]) / max(1e-9, commits[-1][0] - commits[0][0])
    return {
        "images": images,
        "seconds": wall,
        "images_per_second": images / wall,
        "first_commit_s": first,
        "images_per_second_after_first_commit": after,
        "peak_driver_rss_mb": peaks.driver / 2**20,
        "peak_worker_rss_mb": peaks.worker / 2**20,
        "peak_driver_uss_mb": peaks.driver_uss / 2**20,
        "peak_worker_uss_mb": peaks.worker_uss / 2**20,
        "peak_driver_private_mb": peaks.driver_anon,
        "peak_worker_private_mb": peaks.worker_anon,
    }


def _warm_up() -> None:
    """Cluster start-up, excluded from the timing: let Ray's prestarted workers finish starting, and
    create Ray Data's per-cluster actors (stats, autoscaling coordinator), which a long-lived cluster
    has from its first dataset on (~10 s of CPU each here)."""
    import ray

    time.sleep(10)
    ray.data.range(4, override_num_blocks=2).map_batches(lambda b: b).materialize()
    time.sleep(3)


def _child(mode: str, copies: int, args) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--copies", str(copies), "--model", args.model,
           "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--workdir", args.workdir,
           "--actors", str(args.actors), "--rows-per-file", str(args.rows_per_file)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=2, help="COCO128 copies for the throughput comparison")
    parser.add_argument("--memory-copies", type=int, nargs=2, default=[1, 10], metavar=("SMALL", "LARGE"))
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--model", default="fasterrcnn_mobilenet_v3_large_320_fpn")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--actors", type=int, default=2,
                        help="detector actors; each gets threads/actors torch threads (same total as the bare loop)")
    parser.add_argument("--rows-per-file", type=int, default=32, help="output.rows_per_file: images per actor call")
    parser.add_argument("--child", choices=["bare", "detbatch"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        folder = make_input(Path(args.workdir), args.copies)
        if args.child == "bare":
            result = run_bare(folder, args.model, args.batch_size, args.threads)
        else:
            out = Path(tempfile.mkdtemp(dir=args.workdir)) / "out"
            result = run_detbatch(folder, out, args.model, args.batch_size, args.threads, args.actors, args.rows_per_file)
        print(json.dumps(result))
        return

    if not COCO128.exists():
        sys.exit(f"COCO128 not found at {COCO128}")
    with tempfile.TemporaryDirectory() as workdir:
        args.workdir = workdir
        print(f"model {args.model} (random init), batch {args.batch_size}, {args.threads} torch threads, "
              f"{os.cpu_count()} CPUs")
        if not args.skip_throughput:
            throughput(args)
        if not args.skip_memory:
            memory(args)


def throughput(args) -> None:
    bare = _child("bare", args.copies, args)
    det = _child("detbatch", args.copies, args)
    print(f"throughput, COCO128 x{args.copies} ({bare['images']} images):")
    print(f"  bare loop : {bare['images_per_second']:.2f} images/s ({bare['seconds']:.1f} s)")
    print(f"  detbatch  : {det['images_per_second']:.2f} images/s ({det['seconds']:.1f} s; {args.actors} actor(s) x "
          f"{max(1, args.threads // args.actors)} threads, {args.rows_per_file} images per call)")
    print(f"    first results committed after {det['first_commit_s']:.1f} s, then "
          f"{det['images_per_second_after_first_commit']:.2f} images/s")
    print(f"  ratio detbatch / bare = {det['images_per_second'] / bare['images_per_second']:.3f}  (goal >= 0.95)")
    print(f"  ratio after the first commit = {det['images_per_second_after_first_commit'] / bare['images_per_second']:.3f}")
    print(f"  bare loop with its imports of torch + torchvision ({bare['import_seconds']:.1f} s): "
          f"{bare['images_per_second_with_imports']:.2f} images/s; ratio detbatch / that = "
          f"{det['images_per_second'] / bare['images_per_second_with_imports']:.3f}")


def memory(args) -> None:
    small, large = (_child("detbatch", n, args) for n in args.memory_copies)
    print(f"memory, COCO128 x{args.memory_copies[0]} vs x{args.memory_copies[1]}:")
    for n, run in zip(args.memory_copies, (small, large)):
        print(f"  x{n}: {run['images']} images, {run['images_per_second']:.2f} images/s end to end, "
              f"{run['images_per_second_after_first_commit']:.2f} after the first commit ({run['first_commit_s']:.1f} s)")
    for key, label in (("peak_driver_rss_mb", "driver RSS"), ("peak_worker_rss_mb", "largest worker RSS"),
                       ("peak_driver_uss_mb", "driver USS"), ("peak_worker_uss_mb", "largest worker USS"),
                       ("peak_driver_private_mb", "driver private"), ("peak_worker_private_mb", "largest worker private")):
        print(f"  {label:19s}: {small[key]:7.0f} MB -> {large[key]:7.0f} MB  growth {large[key] / small[key]:.2f}x"
              f"  (goal <= 1.2x)")


if __name__ == "__main__":
    main()
