"""``detbatch train`` end to end on the shared two-node Ray cluster: DDP over gloo on both nodes, S3
checkpoints and resume, a killed worker, bad data, and the checkpoint fed to ``detbatch detect``."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from detbatch import storage
from detbatch.config import load_config
from detbatch.detect.config import DetectConfig
from detbatch.detect import run_detect
from detbatch.models import load_checkpoint
from detbatch.datasets.synth import synthesize
from detbatch.training import TrainConfig, run_train
from detbatch.training.records import read_metrics

pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.slow]

WORKER_CLASS = "RayTrainWorker"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """32 training images (one corrupt, three invalid boxes among the others) and 16 validation images."""
    root = tmp_path_factory.mktemp("train-shapes")
    synthesize(str(root / "train"), 32, seed=11, image_size=64, max_objects=2)
    synthesize(str(root / "val"), 16, seed=12, image_size=64, max_objects=2)
    (root / "train" / "images" / "000005.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    coco = json.loads((root / "train" / "annotations.json").read_text())
    bad = [[10, 10, 0, 5], [60, 60, 30, 30], [5, 5, -3, 4]]  # zero width, outside, negative width
    for i, box in enumerate(bad):
        coco["annotations"].append({"id": 1000 + i, "image_id": 1 + i, "category_id": 1, "bbox": box, "area": 1.0, "iscrowd": 0})
    (root / "train" / "annotations.json").write_text(json.dumps(coco))
    return root


def _config(storage_path: str, name: str, train: str, val: str | None = None, **overrides) -> TrainConfig:
    values = {
        "data.train_annotations": train,
        "data.val_annotations": val,
        "data.cache": True,
        "data.read_cpus": 0.5,
        "data.scale_jitter": [0.8, 1.25],
        "model.name": "tiny_fcos",
        "model.weights": "none",
        "optim.optimizer": "adamw",
        "optim.lr": 0.003,
        "optim.batch_size": 4,
        "optim.clip_grad_norm": 10.0,
        "schedule.epochs": 2,
        "schedule.warmup_iters": 2,
        "scaling.num_workers": 2,
        "scaling.placement_strategy": "STRICT_SPREAD",  # one worker per node, always
        "run.storage_path": storage_path,
        "run.name": name,
        "run.max_failures": 0,
        "run.log_every": 2,
        **overrides,
    }
    return load_config(TrainConfig, None, values)


def test_two_nodes_loss_falls_bad_data_counted_and_detect_reads_the_model(shapes, tmp_path):
    config = _config(str(tmp_path / "runs"), "two-nodes", str(shapes / "train/annotations.json"),
                     str(shapes / "val/annotations.json"), **{"schedule.epochs": 3, "run.model_uri": str(tmp_path / "model"),
                                                              "run.keep_checkpoints": 1})  # fmt: skip
    result = run_train(config)

    history = read_metrics(result.run_uri)
    assert [r["epoch"] for r in history] == [1, 2, 3] and result.epochs == 3
    assert all(r["num_workers"] == 2 and r["num_nodes"] == 2 for r in history)
    assert history[-1]["loss"] < history[0]["loss"]
    # 32 rows split 16/16 (no row dropped); 4 steps of 4 per worker; the corrupt one is skipped in its batch.
    assert all(r["skipped_images"] == 1 and r["invalid_boxes"] == 3 and r["train_images"] == 31 for r in history)
    assert all(r["val_images"] == 16 and 0 <= r["val_AP50"] <= 1 for r in history)
    run = Path(result.run_uri)
    for plot in ("loss_curve.png", "ap_curve.png"):
        assert (run / plot).read_bytes()[:4] == b"\x89PNG"
    # keep_checkpoints=1: the best by val AP, and the latest (kept for resuming) when they differ.
    checkpoints = sorted(p.name for p in run.glob("checkpoint_epoch-*"))  # not Ray's checkpoint_manager_snapshot.json
    assert 1 <= len(checkpoints) <= 2 and "checkpoint_epoch-0003" in checkpoints
    best = result.best_checkpoint
    assert Path(best).name in checkpoints and result.best_metrics["val_AP"] == max(r["val_AP"] for r in history)
    state = torch.load(Path(best) / "train_state.pt", weights_only=True)
    assert {"optimizer", "scheduler", "scaler", "epoch", "global_step"} <= set(state)
    ckpt = load_checkpoint(best)
    assert ckpt["model"]["name"] == "tiny_fcos" and [c and c["name"] for c in ckpt["categories"]] == [None, "square", "circle", "triangle"]
    assert (tmp_path / "model" / "model.pt").read_bytes() == (Path(best) / "model.pt").read_bytes()

    out = str(tmp_path / "detections")
    detect = load_config(DetectConfig, None, {"input.uri": str(shapes / "val/images"), "output.uri": out,
                                              "model.name": "tiny_fcos", "model.weights": result.model_uri,
                                              "model.score_threshold": 0.0, "inference.device": "cpu"})  # fmt: skip
    summary = run_detect(detect)
    assert (summary.images_ok, summary.images_error) == (16, 0) and summary.detections > 0
    detections = pd.read_parquet(Path(out) / "detections")
    # FCOS scores its background column like a class (never a positive target, so low once trained); at
    # score threshold 0 an under-trained model can still emit label 0, which detect writes as "N/A".
    named = detections[detections["category"] != "N/A"]
    assert len(named) and set(named["category"]) <= {"square", "circle", "triangle"}
    assert set(named["category_id"]) <= {1, 2, 3}


def test_s3_checkpoints_and_a_rerun_resumes(shapes, s3_bucket):
    data = f"{s3_bucket}/data"
    synthesize(data, 16, seed=21, image_size=64, max_objects=2)
    storage_path = f"{s3_bucket}/runs"
    # Streamed from S3 every epoch (no cache): the path of datasets too large to hold.
    overrides = {"scaling.num_workers": 1, "data.val_fraction": 0.25, "schedule.epochs": 1, "data.cache": False}
    first = run_train(_config(storage_path, "resume", f"{data}/annotations.json", **overrides))
    assert first.best_checkpoint.startswith(f"{s3_bucket}/runs/resume/checkpoint_epoch-0001")

    second = run_train(_config(storage_path, "resume", f"{data}/annotations.json", **{**overrides, "schedule.epochs": 2}))
    history = read_metrics(second.run_uri)
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[1]["resumed_from_epoch"] == 1 and history[0]["resumed_from_epoch"] == 0
    assert history[1]["global_step"] == 2 * history[0]["global_step"] > 0  # the step count continues
    fs, path = storage.resolve(f"{storage_path}/resume")
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(path)}
    assert {"checkpoint_epoch-0001", "checkpoint_epoch-0002", "metrics.jsonl", "loss_curve.png", "ap_curve.png"} <= names
    assert second.latest_checkpoint == f"{s3_bucket}/runs/resume/checkpoint_epoch-0002"
    assert load_checkpoint(second.latest_checkpoint)["epoch"] == 2  # detect --weights takes the s3:// URI


def test_worker_killed_mid_epoch_is_recovered(shapes, tmp_path):
    from ray.util.state import list_actors

    runs = tmp_path / "runs"
    # 96 px images: epochs of several seconds, so that the kill lands in epoch 2.
    synthesize(str(tmp_path / "data"), 32, seed=31, image_size=96, max_objects=3)
    config = _config(str(runs), "killed", str(tmp_path / "data/annotations.json"), str(shapes / "val/annotations.json"),
                     **{"schedule.epochs": 3, "run.max_failures": 2})  # fmt: skip
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(train=run_train(config)))
    thread.start()
    deadline, killed, epochs_at_kill = time.time() + 300, None, None
    snapshot = runs / "killed" / "checkpoint_manager_snapshot.json"  # Ray Train's record of committed checkpoints
    while time.time() < deadline and killed is None and thread.is_alive():
        if snapshot.exists() and "checkpoint_epoch-0001" in snapshot.read_text():
            alive = list_actors(filters=[("class_name", "=", WORKER_CLASS), ("state", "=", "ALIVE")], detail=True)
            if alive:
                epochs_at_kill = len(read_metrics(str(runs / "killed")))
                killed = alive[-1]
                os.kill(killed.pid, signal.SIGKILL)
        time.sleep(0.05)
    thread.join(timeout=300)
    assert killed is not None and epochs_at_kill < 3, "the run ended before a worker could be killed"
    history = read_metrics(str(runs / "killed"))
    assert [r["epoch"] for r in history] == [1, 2, 3] and result["train"].epochs == 3
    assert history[-1]["resumed_from_epoch"] >= 1  # the last epochs ran in the restored worker group

