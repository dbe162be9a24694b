"""Training throughput: ``detbatch train`` (Ray Train, Ray Data) against a bare torch loop, and 2 workers vs 1.

    .venv/bin/python benchmarks/train_overhead.py [--images 512] [--epochs 3] [--batch-size 8] [--threads 1]
        [--device cpu|cuda] [--model tiny_fcos] [--image-size 128]

Both sides train tiny_fcos from the same initialisation on the same synthetic images (128 px), with the
same batch size, torch threads, optimizer and per-batch CPU work (:class:`detbatch.training.samples.Collate`:
tensor conversion and a horizontal flip). The bare loop holds the decoded images in memory (the best a
single process can do); ``detbatch train`` gets them from Ray's object store (``data.cache``) through
``get_dataset_shard``. Images/s count training steps only (no validation, no start-up), over every epoch
but the first (warm-up), as the ``images_per_s`` of ``metrics.jsonl``.

Ray runs as a two-node local cluster (``ray.cluster_utils.Cluster``, one CPU per node): 1 worker, then 2
workers spread over both nodes (DDP over gloo). Prints a Markdown table; ``--out FILE`` also writes JSON.

``--device cuda``: both sides on the first GPU with AMP (fp16 autocast and gradient scaling, as
``optim.amp`` trains), the bare loop copying each batch to the GPU as the training loop does; Ray is one node
with the GPU and every CPU, and runs 1 worker only (one GPU: no 2-worker run). Goal: detbatch ≤ 10% slower.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def bare_loop(annotations: str, epochs: int, batch_size: int, threads: int, lr: float, seed: int,
              model_name: str = "tiny_fcos", device: str = "cpu") -> float:
    """Images/s of a plain single-process loop over in-memory decoded images (epochs 2..N); on ``cuda`` with
    AMP as :mod:`detbatch.training.loop` trains."""
    import contextlib

    import torch

    from detbatch.models import Categories
    from detbatch.training.config import ModelConfig
    from detbatch.training.data import load_source, read_image_files
    from detbatch.training.model import build_starting_model
    from detbatch.training.samples import Collate

    torch.set_num_threads(threads)
    source = load_source(annotations, None, None, "train")
    items = {k: np.array([it[k] for it in source.items], dtype=object) for k in source.items[0]}
    table = read_image_files(items, category_ids=[c["id"] for c in source.categories])
    rows = {name: np.array(table.column(name).to_pylist(), dtype=object) for name in table.column_names}
    categories = Categories.from_coco(source.categories)
    torch.manual_seed(seed)
    model = build_starting_model(ModelConfig(name=model_name, weights="none"), categories).model.to(device)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    amp = device == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    collate = Collate([c["id"] for c in source.categories], hflip=0.5, scale_jitter=None, seed=(seed,))
    rng = np.random.default_rng(seed)
    images, seconds = 0, 0.0
    for epoch in range(epochs):
        order = rng.permutation(len(table))
        started = time.perf_counter()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            batch = collate({k: v[index] for k, v in rows.items()})
            inputs = [im.to(device, non_blocking=True) for im in batch.images]
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in batch.targets]
            with torch.autocast("cuda", dtype=torch.float16) if amp else contextlib.nullcontext():
                losses = model(inputs, targets)
                loss = sum(losses.values())
            if not np.isfinite(float(loss.detach())):  # a sync per step, as the training loop's loss logging has
                raise FloatingPointError("non-finite loss in the bare loop")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if epoch > 0:
                images += len(batch.images)
        if epoch > 0:
            seconds += time.perf_counter() - started
    return images / seconds


def detbatch_train(annotations: str, runs: str, name: str, workers: int, epochs: int, batch_size: int, threads: int,
                   lr: float, seed: int, model_name: str = "tiny_fcos", device: str = "cpu",
                   model_uri: str | None = None) -> float:  # fmt: skip
    """Images/s of ``detbatch train`` (epochs 2..N, from ``metrics.jsonl``)."""
    from detbatch.config import load_config
    from detbatch.training import TrainConfig, run_train
    from detbatch.training.records import read_metrics

    config = load_config(TrainConfig, None, {
        "data.train_annotations": annotations, "data.val_fraction": 0.0, "data.cache": True, "data.seed": seed,
        "data.hflip": 0.5, "data.scale_jitter": None, "data.read_cpus": 0.5,
        "model.name": model_name, "model.weights": "none",
        "optim.optimizer": "adamw", "optim.lr": lr, "optim.batch_size": batch_size, "optim.amp": True,
        "schedule.epochs": epochs, "schedule.kind": "constant", "schedule.warmup_iters": 0,
        "scaling.num_workers": workers, "scaling.cpus_per_worker": 1, "scaling.threads_per_worker": threads,
        "scaling.placement_strategy": "SPREAD", "scaling.use_gpu": device == "cuda", "run.storage_path": runs, "run.name": name, "run.max_failures": 0,
        "run.log_every": 1000, "run.model_uri": model_uri,
    })  # fmt: skip
    result = run_train(config)
    history = read_metrics(result.run_uri)[1:]
    return sum(r["train_images"] for r in history) / sum(r["epoch_seconds"] for r in history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3, help="the first is warm-up and not counted")
    parser.add_argument("--batch-size", type=int, default=8, help="images per worker per step")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process/worker")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: AMP on the first GPU, 1 worker")
    parser.add_argument("--model", default="tiny_fcos", help="a detector of detbatch's zoo, random init")
    parser.add_argument("--image-size", type=int, default=128, help="side of the synthetic images")
    parser.add_argument("--workdir", help="where the images and runs go (default: a temporary folder)")
    parser.add_argument("--out", help="also write the figures here as JSON")
    parser.add_argument("--model-out", help="also keep the 1-worker run's model.pt in this folder (for detbatch export)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import ray
    from ray.cluster_utils import Cluster

    from detbatch.runtime import local_ray_env
    from detbatch.datasets.synth import synthesize

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        data = work / "data"
        if not (data / "annotations.json").exists():
            synthesize(str(data), args.images, seed=0, image_size=args.image_size)
        annotations = str(data / "annotations.json")
        common = dict(epochs=args.epochs, batch_size=args.batch_size, threads=args.threads, lr=args.lr, seed=0,
                      model_name=args.model, device=args.device)
        cuda = args.device == "cuda"
        figures: dict[str, float] = {"bare_1": bare_loop(annotations, **common)}

        with local_ray_env():  # workers as detbatch's local Ray runs them
            if cuda:  # one node: the GPU and every CPU (the data reading gets what the worker leaves)
                cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": os.cpu_count(), "num_gpus": 1})
            else:
                cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
                cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.WARNING)
        try:
            runs = str(work / f"runs-{int(time.time())}")
            figures["detbatch_1"] = detbatch_train(annotations, runs, "one", 1, **common, model_uri=args.model_out)
            if not cuda:
                figures["detbatch_2"] = detbatch_train(annotations, runs, "two", 2, **common)
        finally:
            ray.shutdown()
            cluster.shutdown()
        figures["bare_1_again"] = bare_loop(annotations, **common)

    bare = (figures["bare_1"] + figures["bare_1_again"]) / 2
    rows = [
        ("bare torch loop, 1 process", figures["bare_1"], "first run"),
        ("bare torch loop, 1 process", figures["bare_1_again"], "second run (after the Ray runs)"),
        ("detbatch train, 1 worker", figures["detbatch_1"], f"{figures['detbatch_1'] / bare - 1:+.1%} vs the bare loop's mean"),
    ]
    if "detbatch_2" in figures:
        rows.append(("detbatch train, 2 workers on 2 nodes", figures["detbatch_2"],
                     f"x{figures['detbatch_2'] / figures['detbatch_1']:.2f} vs 1 worker"))
    where = "on the GPU with AMP" if args.device == "cuda" else "on CPU"
    print(f"\n{args.images} images of {args.image_size} px, {args.model}, {where}, batch {args.batch_size} per worker, "
          f"{args.threads} torch thread(s) per process, epochs 2..{args.epochs}\n")  # fmt: skip
    print("| run | images/s | |\n|---|---:|---|")
    for label, value, note in rows:
        print(f"| {label} | {value:.1f} | {note} |")
    figures["detbatch_1_vs_bare"] = figures["detbatch_1"] / bare - 1
    if args.out:
        Path(args.out).write_text(json.dumps({**vars(args), **figures}, indent=2))


if __name__ == "__main__":
    main()
