"""End to end from YOLO labels: train on them, detect with the checkpoint, evaluate against them."""

from __future__ import annotations

import json

import pytest

from detbatch.config import load_config
from detbatch.datasets.convert import convert
from detbatch.datasets.synth import synthesize
from detbatch.detect import run_detect
from detbatch.detect.config import DetectConfig
from detbatch.evaluate import EvaluateConfig, run_evaluate
from detbatch.training import TrainConfig, run_train
from detbatch.training.records import read_metrics

pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.slow]


def test_train_detect_and_evaluate_from_yolo_labels(tmp_path):
    train = synthesize(str(tmp_path / "train"), 16, seed=41, image_size=64, max_objects=2, format="yolo")
    val = synthesize(str(tmp_path / "val"), 8, seed=42, image_size=64, max_objects=2, format="yolo")
    assert train.annotations_uri == str(tmp_path / "train" / "labels")
    config = load_config(TrainConfig, None, {
        "data.train_annotations": train.annotations_uri, "data.val_annotations": val.annotations_uri,
        "data.annotations_format": "yolo", "data.cache": True, "data.read_cpus": 0.5,
        "model.name": "tiny_fcos", "model.weights": "none", "optim.optimizer": "adamw", "optim.lr": 0.003,
        "optim.batch_size": 4, "schedule.epochs": 1, "schedule.warmup_iters": 2, "scaling.num_workers": 1,
        "run.storage_path": str(tmp_path / "runs"), "run.name": "yolo", "run.max_failures": 0,
        "run.model_uri": str(tmp_path / "model"),
    })  # fmt: skip
    result = run_train(config)
    (epoch,) = read_metrics(result.run_uri)
    assert epoch["train_images"] == 16 and epoch["val_images"] == 8 and epoch["invalid_boxes"] == 0
    assert 0 <= epoch["val_AP"] <= 1

    detect = load_config(DetectConfig, None, {"input.uri": val.images_uri, "output.uri": str(tmp_path / "detections"),
                                              "model.name": "tiny_fcos", "model.weights": result.model_uri,
                                              "model.score_threshold": 0.0, "inference.device": "cpu"})  # fmt: skip
    assert run_detect(detect).images_ok == 8

    def evaluate(ground_truth: str, out: str, **kw) -> dict:
        metrics = run_evaluate(EvaluateConfig(detections=str(tmp_path / "detections"), ground_truth=ground_truth, out=str(tmp_path / out), **kw))
        return {k: v for k, v in metrics.items() if k not in ("execution", "inputs")}

    from_yolo = evaluate(val.annotations_uri, "eval-yolo", images=val.images_uri)
    as_coco = convert(val.annotations_uri, str(tmp_path / "val-coco"), "coco", images=val.images_uri).labels_uri
    assert from_yolo == evaluate(as_coco, "eval-coco")
    assert from_yolo["pairing"]["gt_images_paired"] == 8 and from_yolo["pairing"]["detections_evaluated"] > 0
    assert json.loads((tmp_path / "eval-yolo" / "metrics.json").read_text())["ground_truth"]["images"] == 8
