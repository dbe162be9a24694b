"""How close `detbatch detect` comes to the loop a user would write without it, and how its memory grows.

    .venv/bin/python benchmarks/detect_efficiency.py [--layout auto|explicit] [--actors 2|1] [--copies 2]
        [--repeat 3] [--rows-per-file 32] [--memory-copies 1 10 [N ...]] [--skip-throughput] [--skip-memory]
        [--device cpu|cuda] [--decode cpu [gpu]] [--decode-cpus 0.5] [--images DIR] [--limit N] [--out FILE.json]
        (needs psutil: pip install -e ".[bench]")

Throughput: the same images (COCO128 × copies), the same model (random init) and batch size, on the
same cores, measured side by side in one run:
  - the model-only limit, once: `--threads` processes × 1 torch thread running the model alone over
    pre-decoded images (the most any pipeline could reach on these cores);
  - the baseline, on cpu the hand-written loop: `--threads` processes × 1 torch thread (plain
    `multiprocessing`, spawned), each decoding (PIL) and detecting its contiguous share of the files,
    timed from the pool's start (its processes' start, imports and model construction included) to the
    last result; on cuda the single-process loop (one process per GPU: PIL or decode_jpeg + model);
  - detbatch: `run_detect` on a local Ray started as `detbatch detect` starts it (ray.init and Ray
    Data's per-cluster actors excluded as cluster start-up; listing, the actors' process start,
    torch import and model load, decode, inference, Parquet commits and run.json included).
    `--layout auto`: the pool detbatch chooses (`max_actors` and `cpus_per_actor` auto, as
    configs/detect.yaml has them); `explicit`: `--actors` actors of (2 − `--decode-cpus`) / actors CPUs
    sharing the baseline's total of torch threads; `--rows-per-file` images per call.
It prints images/s and the ratio to the baseline (goal ≥ 0.9), when the first results were committed
(goal ≤ 10 s after the cluster is up) and the rate after that. The pair runs `--repeat` times,
alternating, and the median ratio is printed: this machine's speed drifts (the same baseline ran
5.7-8.2 images/s within an hour), so only alternated pairs compare.

`--decode cpu gpu` runs the pair once per decode: `cpu` decodes with PIL (the bare loop in its own
process, detbatch in its decode tasks), `gpu` with torchvision's batched decode_jpeg on `--device` (the
bare loop a batch at a time, detbatch in its actors: `inference.decode: gpu`). On cuda, GPU busy is
nvidia-smi's utilization.gpu (or torch.cuda.utilization where nvidia-smi is missing) every 200 ms, averaged
over the detbatch run and from its first commit to its last. `--images DIR` replaces COCO128 (its `*.jpg`,
the first `--limit` of them); `--out` writes every figure as JSON.

Memory: detbatch on COCO128 × 1, × 10 (and any more `--memory-copies`); peak RSS, USS and private
memory of the driver and of the largest Ray worker, sampled every 0.5 s, and each run's growth over
the first. Each measurement runs in a fresh subprocess so that peaks do not carry over. Throughput
runs do not sample: reading smaps costs CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

COCO128 = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128" / "images"


def make_input(root: Path, copies: int, images: Path = COCO128, limit: int | None = None) -> Path:
    """The first ``limit`` JPEGs of ``images`` (COCO128) × copies as symlinks (distinct uris, same bytes)."""
    folder = root / f"x{copies}"
    for c in range(copies):
        sub = folder / f"copy{c:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        for img in sorted(images.glob("*.jpg"))[:limit]:
            link = sub / img.name
            if not link.exists():
                link.symlink_to(img.resolve())
    return folder


def run_bare(folder: Path, model: str, batch_size: int, threads: int, device: str = "cpu", decode: str = "cpu") -> dict:
    imports_start = time.perf_counter()
    import numpy as np
    import torch
    from PIL import Image

    from detbatch.models import build_detector

    imports = time.perf_counter() - imports_start

    torch.set_num_threads(threads)
    files = sorted(str(p) for p in folder.rglob("*.jpg"))
    start = time.perf_counter()
    detector = build_detector(model, "none", score_threshold=0.05).model.to(device)
    # On a GPU, fp16 autocast as detbatch's actors use it (inference.fp16).
    autocast = torch.autocast("cuda", dtype=torch.float16) if device == "cuda" else contextlib.nullcontext()
    results = []
    with torch.inference_mode(), autocast, (GpuBusySampler() if device == "cuda" else contextlib.nullcontext()) as gpu:
        wall_start = time.time()
        for i in range(0, len(files), batch_size):
            if decode == "gpu":  # one batched call of torchvision's decode_jpeg on the device (nvJPEG on cuda)
                from torchvision.io import ImageReadMode, decode_jpeg

                encoded = [torch.frombuffer(bytearray(Path(f).read_bytes()), dtype=torch.uint8)
                           for f in files[i : i + batch_size]]
                tensors = [t.float().div_(255) for t in decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)]
            else:
                images = [np.asarray(Image.open(f).convert("RGB")) for f in files[i : i + batch_size]]
                tensors = [torch.from_numpy(im).to(device).permute(2, 0, 1).float().div_(255) for im in images]
            results += [{k: v.cpu().numpy() for k, v in o.items()} for o in detector(tensors)]
    wall = time.perf_counter() - start  # .cpu() above waited for the GPU
    busy = {} if gpu is None else {"gpu_busy_percent": gpu.mean(wall_start, time.time())}
    return {"images": len(files), "seconds": wall, "images_per_second": len(files) / wall,
            "import_seconds": imports, "images_per_second_with_imports": len(files) / (wall + imports), **busy}


def _hand_share(files: list[str], model: str, batch_size: int, limit_only: bool) -> dict:
    """One process of the hand-written loop: 1 torch thread, PIL decode + model over its share of the files.
    ``limit_only``: decode them all first and time the model alone (the model-only limit)."""
    import numpy as np
    import torch
    from PIL import Image

    from detbatch.models import build_detector

    torch.set_num_threads(1)
    detector = build_detector(model, "none", score_threshold=0.05).model

    def tensors(batch):
        return [torch.from_numpy(np.asarray(Image.open(f).convert("RGB"))).permute(2, 0, 1).float().div_(255)
                for f in batch]

    batches = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    decoded = [tensors(b) for b in batches] if limit_only else None
    results = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i, batch in enumerate(batches):
            out = detector(decoded[i] if limit_only else tensors(batch))
            results += len([{k: v.numpy() for k, v in o.items()} for o in out])
    return {"images": results, "seconds": time.perf_counter() - start}


def run_hand(folder: Path, model: str, batch_size: int, processes: int, limit_only: bool = False) -> dict:
    """The loop a user would write on these cores without Ray: ``processes`` processes of one torch thread
    each (``multiprocessing``, spawned), each decoding and detecting its contiguous share of the files.
    Timed from the pool's start (its processes' start, imports and model construction included) to the
    last result. ``limit_only``: the same processes on pre-decoded images, the model's time alone: the
    most any pipeline could reach here."""
    import multiprocessing

    files = sorted(str(p) for p in folder.rglob("*.jpg"))
    shares = [files[len(files) * i // processes : len(files) * (i + 1) // processes] for i in range(processes)]
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        parts = pool.starmap(_hand_share, [(share, model, batch_size, limit_only) for share in shares])
    wall = time.perf_counter() - start
    images = sum(p["images"] for p in parts)
    if limit_only:  # the processes run at once: the slowest one's model time bounds them
        model_s = max(p["seconds"] for p in parts)
        return {"images": images, "seconds": model_s, "images_per_second": images / model_s}
    return {"images": images, "seconds": wall, "images_per_second": images / wall}


class PeakSampler:
    """Peak memory of this process and of its largest descendant (the Ray workers), sampled.

    RSS counts the object-store pages a worker has mapped (decoded images it wrote or read), which
    Ray bounds separately (``object_store_memory``). USS counts pages no other process maps, which
    includes object-store pages only this worker touched. Private (``RssAnon`` in /proc/PID/status) is
    the process's own heap and stacks, without any shared-memory (object store) or file pages. Shared
    (``RssShmem``) is the object-store pages the worker has mapped. Node shared memory (``Shmem`` in
    /proc/meminfo) counts each object-store page once, for all processes: its rise over the run is
    the store's resident size, which Ray caps at ``object_store_memory``.
    """

    def __init__(self, interval: float = 0.5):
        import psutil

        self.me = psutil.Process()
        self.driver = self.worker = self.driver_uss = self.worker_uss = self.driver_anon = self.worker_anon = 0
        self.worker_shmem = 0.0
        self.worker_rss_parts = (0.0, 0.0, 0.0)  # private, shared, file MiB of the worker at its RSS peak
        self.node_shmem_start = self.node_shmem = psutil.virtual_memory().shared
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        from detbatch.runtime import proc_status_mib

        while not self._stop.is_set():
            mine = self.me.memory_full_info()
            self.driver, self.driver_uss = max(self.driver, mine.rss), max(self.driver_uss, mine.uss)
            self.driver_anon = max(self.driver_anon, proc_status_mib("RssAnon") or 0.0)
            for child in self.me.children(recursive=True):
                try:
                    if "ray::" in " ".join(child.cmdline()[:1]):
                        info = child.memory_full_info()
                        if info.rss > self.worker:
                            self.worker_rss_parts = tuple(proc_status_mib(field, child.pid) or 0.0
                                                          for field in ("RssAnon", "RssShmem", "RssFile"))
                        self.worker, self.worker_uss = max(self.worker, info.rss), max(self.worker_uss, info.uss)
                        self.worker_anon = max(self.worker_anon, proc_status_mib("RssAnon", child.pid) or 0.0)
                        self.worker_shmem = max(self.worker_shmem, proc_status_mib("RssShmem", child.pid) or 0.0)
                except psutil.Error:
                    pass
            self.node_shmem = max(self.node_shmem, psutil.virtual_memory().shared)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_detbatch(folder: Path, out: Path, model: str, batch_size: int, threads: int, actors: int, rows_per_file: int,
                 sample_memory: bool, device: str = "cpu", decode: str = "cpu", decode_cpus: float = 0.5,
                 layout: str = "explicit") -> dict:
    import pyarrow.parquet as pq
    import ray

    from detbatch.config import load_config
    from detbatch.detect.config import DetectConfig
    from detbatch.detect import run_detect
    from detbatch.runtime import init_ray

    common = {
        "input.uri": str(folder),
        "output.uri": str(out),
        "model.name": model,
        "model.weights": "none",
        "inference.batch_size": batch_size,
        "inference.min_actors": actors,
        "inference.max_actors": actors,
        "output.rows_per_file": rows_per_file,
        "inference.decode": decode,
    }
    if device == "cuda":
        # One GPU per actor, fp16 autocast (the default), every other CPU of the machine decoding.
        init_ray("local")
        # Two CPUs per actor, as configs/detect.yaml: with overlap_commit one call's Parquet commit runs beside
        # the other's inference.
        settings = {"inference.device": "cuda", "inference.gpus_per_actor": 1, "inference.cpus_per_actor": 2,
                    "inference.decode_cpus": 1}
    else:
        init_ray("local", num_cpus=2)
        if layout == "auto":
            # As a user of configs/detect.yaml gets it: max_actors and cpus_per_actor auto, decode_cpus as given.
            common.pop("inference.min_actors")
            settings = {"inference.device": "cpu", "inference.max_actors": "auto", "inference.decode_cpus": decode_cpus}
        else:
            # 2 CPUs: the actors share what decoding leaves, with the baseline's total of torch threads.
            settings = {"inference.device": "cpu", "inference.cpus_per_actor": (2 - decode_cpus) / actors,
                        "inference.threads_per_actor": max(1, threads // actors), "inference.decode_cpus": decode_cpus}
    _warm_up()
    config = load_config(DetectConfig, None, {**common, **settings})
    # The sampler reads every Ray process's /proc/PID/smaps twice a second, which costs CPU the
    # detector would otherwise have: memory runs sample, throughput runs do not.
    with (PeakSampler() if sample_memory else contextlib.nullcontext()) as peaks, \
            (GpuBusySampler() if device == "cuda" else contextlib.nullcontext()) as gpu:
        wall_start, start = time.time(), time.perf_counter()
        summary = run_detect(config)
        wall = time.perf_counter() - start
    ray.shutdown()
    images = summary.images_ok + summary.images_error
    # Commit times of the image tables: when the first results landed, and the rate after that.
    commits = sorted((p.stat().st_mtime, pq.read_metadata(p).num_rows) for p in (out / "images").glob("*.parquet"))
    first = commits[0][0] - wall_start
    after = sum(n for _, n in commits[1:]) / max(1e-9, commits[-1][0] - commits[0][0])
    result = {
        "images": images,
        "seconds": wall,
        "images_per_second": images / wall,
        "first_commit_s": first,
        "images_per_second_after_first_commit": after,
    }
    if gpu is not None:
        result["gpu_busy_percent"] = gpu.mean(wall_start, wall_start + wall)
        result["gpu_busy_percent_after_first_commit"] = gpu.mean(commits[0][0], commits[-1][0])
        result["gpu_samples"] = len(gpu.samples)
    run = json.loads((out / "run.json").read_text())
    result["pool"] = run.get("pool")
    if sample_memory:
        result.update({
            "peak_driver_rss_mb": peaks.driver / 2**20,
            "peak_worker_rss_mb": peaks.worker / 2**20,
            "peak_driver_uss_mb": peaks.driver_uss / 2**20,
            "peak_worker_uss_mb": peaks.worker_uss / 2**20,
            "peak_driver_private_mb": peaks.driver_anon,
            "peak_worker_private_mb": peaks.worker_anon,
            "peak_worker_shared_mb": peaks.worker_shmem,
            "worker_rss_peak_parts_mb": peaks.worker_rss_parts,
            "node_shared_rise_mb": (peaks.node_shmem - peaks.node_shmem_start) / 2**20,
        })
    return result


class GpuBusySampler:
    """The first GPU's utilisation (nvidia-smi's ``utilization.gpu``: the share of time a kernel ran) every
    200 ms, stamped with wall time, so that a window of the run can be averaged. Without nvidia-smi, the same
    counter through NVML (``torch.cuda.utilization``, which needs nvidia-ml-py), from a thread."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self._proc = None
        self._stop = threading.Event()

    def __enter__(self):
        import shutil

        if shutil.which("nvidia-smi"):
            query = ["nvidia-smi", "--id=0", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"]
            self._proc = subprocess.Popen(query, stdout=subprocess.PIPE, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
        else:
            self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _read(self):
        for line in self._proc.stdout:
            try:
                self.samples.append((time.time(), float(line.strip())))
            except ValueError:  # "[N/A]" or a header
                pass

    def _poll(self):
        import torch

        while not self._stop.wait(0.2):
            self.samples.append((time.time(), float(torch.cuda.utilization(0))))

    def __exit__(self, *exc):
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()
        self._thread.join(timeout=5)

    def mean(self, start: float, end: float) -> float:
        busy = [u for t, u in self.samples if start <= t <= end]
        return sum(busy) / len(busy) if busy else float("nan")


def _warm_up() -> None:
    """Cluster start-up, excluded from the timing: let Ray's prestarted workers finish starting, and
    create Ray Data's per-cluster actors (stats, autoscaling coordinator), which a long-lived cluster
    has from its first dataset on (~10 s of CPU each here)."""
    import ray

    time.sleep(10)
    ray.data.range(4, override_num_blocks=2).map_batches(lambda b: b).materialize()
    time.sleep(3)


def _child(mode: str, copies: int, args, decode: str = "cpu") -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--copies", str(copies), "--model", args.model,
           "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--workdir", args.workdir,
           "--actors", str(args.actors), "--rows-per-file", str(args.rows_per_file), "--device", args.device,
           "--decode", decode, "--decode-cpus", str(args.decode_cpus), "--layout", args.layout, "--images", str(args.images),
           *(["--limit", str(args.limit)] if args.limit else [])]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=2, help="COCO128 copies for the throughput comparison")
    parser.add_argument("--repeat", type=int, default=3, help="bare/detbatch pairs for the throughput comparison")
    parser.add_argument("--memory-copies", type=int, nargs="+", default=[1, 10], metavar="N",
                        help="COCO128 copies of each memory run; growth is against the first")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--model", default="fasterrcnn_mobilenet_v3_large_320_fpn")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--actors", type=int, default=2,
                        help="detector actors; each gets threads/actors torch threads (same total as the bare loop)")
    parser.add_argument("--rows-per-file", type=int, default=32, help="output.rows_per_file: images per actor call")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: both sides on the first GPU with fp16 autocast; detbatch with --actors GPU "
                             "actors and every other CPU decoding; prints GPU busy %% from nvidia-smi")
    parser.add_argument("--decode", nargs="+", choices=["cpu", "gpu"], default=["cpu"],
                        help="where JPEGs are decoded; each given runs the pair (gpu: torchvision's decode_jpeg on --device)")
    parser.add_argument("--decode-cpus", type=float, default=0.5,
                        help="inference.decode_cpus on cpu; the actors share the other CPUs of 2")
    parser.add_argument("--layout", choices=["auto", "explicit"], default="explicit",
                        help="cpu: auto = the pool detbatch chooses (max_actors and cpus_per_actor auto, as "
                             "configs/detect.yaml); explicit = --actors actors sharing the CPUs decode leaves")
    parser.add_argument("--images", type=Path, default=COCO128, help="a folder of .jpg (default: COCO128)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images of --images")
    parser.add_argument("--out", type=Path, help="write every figure here as JSON")
    parser.add_argument("--child", choices=["bare", "hand", "limit", "detbatch", "detbatch-memory"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        folder = make_input(Path(args.workdir), args.copies, args.images, args.limit)
        decode = args.decode[0]
        if args.child == "bare":
            result = run_bare(folder, args.model, args.batch_size, args.threads, args.device, decode)
        elif args.child in ("hand", "limit"):
            result = run_hand(folder, args.model, args.batch_size, args.threads, limit_only=args.child == "limit")
        else:
            out = Path(tempfile.mkdtemp(dir=args.workdir)) / "out"
            result = run_detbatch(folder, out, args.model, args.batch_size, args.threads, args.actors, args.rows_per_file,
                                  sample_memory=args.child == "detbatch-memory", device=args.device, decode=decode,
                                  decode_cpus=args.decode_cpus, layout=args.layout)
        print(json.dumps(result))
        return

    if not args.images.exists():
        sys.exit(f"no images at {args.images} (COCO128 is looked for at {COCO128}; or give --images DIR)")
    figures: dict = {"model": args.model, "device": args.device, "batch_size": args.batch_size,
                     "rows_per_file": args.rows_per_file, "actors": args.actors, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as workdir:
        args.workdir = workdir
        print(f"model {args.model} (random init), batch {args.batch_size}, {args.threads} torch threads, "
              f"{os.cpu_count()} CPUs, device {args.device}")
        if not args.skip_throughput:
            figures["throughput"] = {decode: throughput(args, decode) for decode in args.decode}
        if not args.skip_memory:
            memory(args)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


def throughput(args, decode: str = "cpu") -> list[dict]:
    """The baseline loop and detbatch, alternated ``--repeat`` times; each pair's ratio and the median.
    On cpu the baseline is the hand-written loop (``--threads`` processes × 1 thread, :func:`run_hand`)
    and the model-only limit is measured once beside it; on cuda it is the single-process loop
    (:func:`run_bare`, one process per GPU). Returns the pairs' figures."""
    baseline = "bare" if args.device == "cuda" else "hand"
    name = "bare loop, 1 process" if baseline == "bare" else f"hand loop, {args.threads} processes x 1 thread"
    limit = None
    if baseline == "hand":
        limit = _child("limit", args.copies, args, decode)
        print(f"model-only limit ({args.threads} processes x 1 thread, pre-decoded images, model time only): "
              f"{limit['images_per_second']:.2f} images/s")
    ratios, pairs = [], []
    for i in range(args.repeat):
        base = _child(baseline, args.copies, args, decode)
        det = _child("detbatch", args.copies, args, decode)
        ratio = det["images_per_second"] / base["images_per_second"]
        ratios.append(ratio)
        pairs.append({"baseline": baseline, baseline: base, "detbatch": det, "ratio": ratio, "limit": limit,
                      "ratio_after_first_commit": det["images_per_second_after_first_commit"] / base["images_per_second"]})
        print(f"throughput, {args.images.name} x{args.copies} ({base['images']} images), {decode} decode, "
              f"run {i + 1} of {args.repeat}:")
        print(f"  {name}: {base['images_per_second']:.2f} images/s ({base['seconds']:.1f} s"
              f"{', its processes start included' if baseline == 'hand' else ''})")
        pool = det.get("pool") or {}
        print(f"  detbatch  : {det['images_per_second']:.2f} images/s ({det['seconds']:.1f} s; {pool.get('max_actors')} "
              f"actor(s) of {pool.get('cpus_per_actor')} CPU x {pool.get('threads_per_actor')} thread(s), decode "
              f"{pool.get('decode')}, {args.rows_per_file} images per call)")
        print(f"    first results committed after {det['first_commit_s']:.1f} s, then "
              f"{det['images_per_second_after_first_commit']:.2f} images/s")
        print(f"  ratio detbatch / {baseline} = {ratio:.3f}  (goal >= 0.9)")
        print(f"  ratio after the first commit = "
              f"{det['images_per_second_after_first_commit'] / base['images_per_second']:.3f}")
        if limit:
            print(f"  of the model-only limit: {baseline} {base['images_per_second'] / limit['images_per_second']:.3f}, "
                  f"detbatch {det['images_per_second'] / limit['images_per_second']:.3f}")
        if "import_seconds" in base:
            print(f"  bare loop with its imports of torch + torchvision ({base['import_seconds']:.1f} s): "
                  f"{base['images_per_second_with_imports']:.2f} images/s; ratio detbatch / that = "
                  f"{det['images_per_second'] / base['images_per_second_with_imports']:.3f}")
        if "gpu_busy_percent" in det:
            print(f"  GPU busy (utilization.gpu, mean): {det['gpu_busy_percent']:.0f}% over the detbatch run, "
                  f"{det['gpu_busy_percent_after_first_commit']:.0f}% from the first commit to the last  (goal >= 90%); "
                  f"bare loop {base['gpu_busy_percent']:.0f}%")
    if args.repeat > 1:
        print(f"ratios: {', '.join(f'{r:.3f}' for r in ratios)}; median {statistics.median(ratios):.3f}, "
              f"min {min(ratios):.3f}  (goal >= 0.9)")
    return pairs


def memory(args) -> None:
    """detbatch on each of ``--memory-copies``; peaks, and each one's growth over the first."""
    runs = [_child("detbatch-memory", n, args) for n in args.memory_copies]
    print(f"memory, COCO128 {' vs '.join(f'x{n}' for n in args.memory_copies)}:")
    for n, run in zip(args.memory_copies, runs):
        print(f"  x{n}: {run['images']} images, {run['images_per_second']:.2f} images/s end to end, "
              f"{run['images_per_second_after_first_commit']:.2f} after the first commit ({run['first_commit_s']:.1f} s)")
    first = runs[0]
    for key, label in (("peak_driver_rss_mb", "driver RSS"), ("peak_worker_rss_mb", "largest worker RSS"),
                       ("peak_driver_uss_mb", "driver USS"), ("peak_worker_uss_mb", "largest worker USS"),
                       ("peak_driver_private_mb", "driver private"), ("peak_worker_private_mb", "largest worker private"),
                       ("peak_worker_shared_mb", "largest worker shared"), ("node_shared_rise_mb", "node shared, rise")):
        peaks = " -> ".join(f"{run[key]:6.0f}" for run in runs)
        growth = ", ".join(f"{run[key] / first[key]:.2f}x" for run in runs[1:])
        print(f"  {label:23s}: {peaks} MB  growth {growth}  (goal <= 1.2x)")
    parts = " -> ".join("{:.0f} + {:.0f} + {:.0f}".format(*run["worker_rss_peak_parts_mb"]) for run in runs)
    print(f"  largest worker RSS at its peak = private + shared + file-backed: {parts} MB")


if __name__ == "__main__":
    main()
