"""How close `detbatch detect` comes to a bare single-process loop, and how its memory grows.

    .venv/bin/python benchmarks/detect_efficiency.py [--copies 2] [--memory-copies 1 10]

Throughput: the same images (COCO128 × copies), the same model (random init), batch size and torch
thread count, measured side by side in one run:
  - bare: one process, PIL decode + model, no Ray;
  - detbatch: `run_detect` on a local Ray started as `detbatch detect` starts it (ray.init and the
    workers' preload of torch excluded as cluster start-up; listing, actor start, model load, decode,
    inference, Parquet commits and run.json included).
It prints both images/s and their ratio.

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
    import numpy as np
    import torch
    from PIL import Image

    from detbatch.models import build_detector

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
    return {"images": len(files), "seconds": wall, "images_per_second": len(files) / wall}


class PeakSampler:
    """Peak RSS of this process and of its largest descendant (the Ray workers), sampled."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self.me = psutil.Process()
        self.driver = self.worker = 0
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            self.driver = max(self.driver, self.me.memory_info().rss)
            for child in self.me.children(recursive=True):
                try:
                    if "ray::" in " ".join(child.cmdline()[:1]):
                        self.worker = max(self.worker, child.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_detbatch(folder: Path, out: Path, model: str, batch_size: int, threads: int) -> dict:
    import ray

    from detbatch.config import DetectConfig, load_config
    from detbatch.detect import run_detect
    from detbatch.runtime import init_ray

    init_ray("local", num_cpus=2)
    time.sleep(10)  # cluster start-up, excluded: let the prestarted workers finish preloading torch
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
            "inference.cpus_per_actor": 1,
            "inference.threads_per_actor": threads,
            "inference.decode_cpus": 1,
        },
    )
    with PeakSampler() as peaks:
        start = time.perf_counter()
        summary = run_detect(config)
        wall = time.perf_counter() - start
    ray.shutdown()
    images = summary.images_ok + summary.images_error
    return {
        "images": images,
        "seconds": wall,
        "images_per_second": images / wall,
        "peak_driver_rss_mb": peaks.driver / 2**20,
        "peak_worker_rss_mb": peaks.worker / 2**20,
    }


def _child(mode: str, copies: int, args) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--copies", str(copies), "--model", args.model,
           "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--workdir", args.workdir]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=2, help="COCO128 copies for the throughput comparison")
    parser.add_argument("--memory-copies", type=int, nargs=2, default=[1, 10], metavar=("SMALL", "LARGE"))
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--model", default="fasterrcnn_mobilenet_v3_large_320_fpn")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=["bare", "detbatch"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        folder = make_input(Path(args.workdir), args.copies)
        if args.child == "bare":
            result = run_bare(folder, args.model, args.batch_size, args.threads)
        else:
            out = Path(tempfile.mkdtemp(dir=args.workdir)) / "out"
            result = run_detbatch(folder, out, args.model, args.batch_size, args.threads)
        print(json.dumps(result))
        return

    if not COCO128.exists():
        sys.exit(f"COCO128 not found at {COCO128}")
    with tempfile.TemporaryDirectory() as workdir:
        args.workdir = workdir
        print(f"model {args.model} (random init), batch {args.batch_size}, {args.threads} torch threads, "
              f"{os.cpu_count()} CPUs")
        bare = _child("bare", args.copies, args)
        det = _child("detbatch", args.copies, args)
        print(f"throughput, COCO128 x{args.copies} ({bare['images']} images):")
        print(f"  bare loop : {bare['images_per_second']:.2f} images/s ({bare['seconds']:.1f} s)")
        print(f"  detbatch  : {det['images_per_second']:.2f} images/s ({det['seconds']:.1f} s)")
        print(f"  ratio detbatch / bare = {det['images_per_second'] / bare['images_per_second']:.3f}  (goal >= 0.95)")
        if args.skip_memory:
            return
        small, large = (_child("detbatch", n, args) for n in args.memory_copies)
        print(f"memory, COCO128 x{args.memory_copies[0]} vs x{args.memory_copies[1]}:")
        for key, label in (("peak_driver_rss_mb", "driver"), ("peak_worker_rss_mb", "largest worker")):
            print(f"  {label:15s}: {small[key]:7.0f} MB -> {large[key]:7.0f} MB  growth {large[key] / small[key]:.2f}x"
                  f"  (goal <= 1.2x)")


if __name__ == "__main__":
    main()
