"""What the detect pipeline itself costs per image, against a peer written with Ray Data's own readers and writer.

    .venv/bin/python benchmarks/pipeline_overhead.py [--sizes 2000 10000] [--work /tmp/detbatch-overhead] [--json out.json]

Both read the same folder of N small PNG files (32×32 noise, ~3 KiB), decode each to RGB, hand each image to
the benchmark-only ``null`` detector (:mod:`detbatch.models.null`: it finds nothing) as a float tensor, and
write one Parquet row per image, on a local Ray (``address="local"``, 2 CPUs), each in a fresh process:
  - detbatch: ``detbatch detect --model null --weights none --ray-address local`` (defaults otherwise:
    units and calls of 256 images, 1 actor, decode tasks of 1 CPU; the commit protocol, the plan, run.json);
  - peer: ``ray.data.read_images(include_paths=True)`` -> ``map_batches`` (an actor running the same
    ``null`` model on each image's tensor, 256 images a batch) -> ``write_parquet`` (path, width, height,
    no detections).
Measured (benchmarks/proctree.py): wall time and the CPU seconds of every process of the run (the command,
Ray's GCS, raylet, dashboard and workers), sampled every 0.5 s. CPU-ms per image at each size include Ray's
start and stop; the marginal CPU-ms per image, (CPU(N2) - CPU(N1)) / (N2 - N1), leave them out.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import time
from pathlib import Path

import proctree

ROOT = Path(__file__).resolve().parent.parent
SIZE = 32


def png_pool(distinct: int = 256, size: int = SIZE) -> list[bytes]:
    """``distinct`` PNGs of ``size``×``size`` noise (seeded): the images the benchmarks repeat."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pool = []
    for _ in range(distinct):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
        pool.append(buf.getvalue())
    return pool


def write_images(folder: Path, n: int, distinct: int = 256) -> None:
    """``n`` PNG files of ``SIZE``×``SIZE`` noise (``distinct`` different images, repeated), in one folder."""
    if folder.exists() and len(list(folder.iterdir())) == n:
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pool = png_pool(distinct)
    for i in range(n):
        (folder / f"{i:08d}.png").write_bytes(pool[i % distinct])


def peer(images: str, output: str) -> None:
    """The Ray Data peer (runs in its own process)."""
    import numpy as np
    import ray
    import torch

    from detbatch.models import build_detector

    class NullModel:
        def __init__(self) -> None:
            torch.set_num_threads(1)
            self.model = build_detector("null", "none").model

        def __call__(self, batch: dict) -> dict:
            tensors = [torch.from_numpy(im).permute(2, 0, 1).float().div_(255) for im in batch["image"]]
            with torch.inference_mode():
                outputs = self.model(tensors)
            return {"path": batch["path"], "width": np.array([im.shape[1] for im in batch["image"]], np.int32),
                    "height": np.array([im.shape[0] for im in batch["image"]], np.int32),
                    "num_detections": np.array([len(o["boxes"]) for o in outputs], np.int32)}

    ray.init(address="local", num_cpus=2, logging_level="WARNING")
    (ray.data.read_images(images, include_paths=True, mode="RGB")
     .map_batches(NullModel, batch_size=256, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
     .write_parquet(output))
    ray.shutdown()


def count_rows(output: str) -> int:
    import pyarrow.dataset as pads

    return pads.dataset(output, format="parquet").count_rows()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs=2, default=[2000, 10000])
    p.add_argument("--pipelines", nargs="+", default=["detbatch", "peer"])
    p.add_argument("--work", default="/tmp/detbatch-overhead")
    p.add_argument("--json")
    p.add_argument("--peer", nargs=2, help=argparse.SUPPRESS)  # IMAGES OUTPUT: run the peer here
    args = p.parse_args()
    if args.peer:
        peer(*args.peer)
        return
    work, results = Path(args.work), []
    for n in args.sizes:
        images = work / f"images-{n}"
        write_images(images, n)
        for pipeline in args.pipelines:
            out = work / f"out-{pipeline}-{n}"
            shutil.rmtree(out, ignore_errors=True)
            if pipeline == "detbatch":
                command = [sys.executable, "-m", "detbatch", "detect", "--input", str(images), "--output", str(out),
                           "--model", "null", "--weights", "none", "--ray-address", "local"]
            else:
                command = [sys.executable, __file__, "--peer", str(images), str(out)]
            usage = proctree.run_measured(command, cwd=ROOT)
            if usage.returncode:
                raise SystemExit(f"{pipeline} at {n} failed ({usage.returncode})")
            rows = count_rows(str(out / "images") if pipeline == "detbatch" else str(out))
            results.append({"pipeline": pipeline, "images": n, "rows": rows, "wall_s": round(usage.wall_s, 1),
                            "cpu_s": round(usage.cpu_s, 1), "cpu_ms_per_image": round(1000 * usage.cpu_s / n, 2),
                            "driver_cpu_s": round(usage.root_cpu_s, 1), "by_kind": usage.by_kind(),
                            "finished_at": time.strftime("%H:%M:%S", time.gmtime())})
            print(json.dumps(results[-1]), flush=True)
    (n1, n2) = args.sizes
    for pipeline in args.pipelines:
        a, b = (next(r for r in results if r["pipeline"] == pipeline and r["images"] == n) for n in (n1, n2))
        marginal = round(1000 * (b["cpu_s"] - a["cpu_s"]) / (n2 - n1), 2)
        results.append({"pipeline": pipeline, "marginal_cpu_ms_per_image": marginal})
        print(json.dumps(results[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
