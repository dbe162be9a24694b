"""The diagnostics of ``detbatch evaluate`` (COCO): thresholds in metrics.json, thresholds.json, the
confusion matrix, and the flags that set them."""

from __future__ import annotations

import json

import numpy as np

from detbatch.cli import EVALUATE_FLAGS, build_parser, load_job_config
from detbatch.evaluate import EvaluateConfig, run_evaluate
from detbatch.metrics import GroundTruth
from detbatch.metrics.confusion import confusion_matrix

from tests.evaluate.runs import setup_run


def test_metrics_json_and_thresholds_json_hold_the_diagnostics(tmp_path):
    dataset, dt, gt_uri, run = setup_run(str(tmp_path))
    out = tmp_path / "eval"
    metrics = run_evaluate(EvaluateConfig(detections=run, ground_truth=gt_uri, out=str(out)))
    gt = GroundTruth.from_coco(dataset)
    names = {c["id"]: c["name"] for c in dataset["categories"]}

    saved = json.loads((out / "thresholds.json").read_text())
    assert set(saved) == {"per_category", "default"}
    th = metrics["thresholds"]
    assert saved["default"] == th["overall"]["0.50"]["best"]["threshold"]
    for cat_id, score in saved["per_category"].items():
        assert th["per_category"][names[int(cat_id)]]["0.50"]["best"]["threshold"] == score

    confusion = metrics["confusion"]
    assert confusion["labels"] == [names[int(k)] for k in gt.category_ids] + ["background"]
    used = [confusion["score_thresholds"][names[int(k)]] for k in gt.category_ids]
    expected = confusion_matrix(gt, dt, np.array([np.inf if t is None else t for t in used]))
    assert confusion["matrix"] == expected.tolist()
    assert used == [saved["per_category"].get(str(int(k)), saved["default"]) for k in gt.category_ids]

    for png in ("confusion.png", "thresholds.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "## Score thresholds (F1-optimal)" in report and "## Confusion matrix" in report
    assert "| background | " + " | ".join(str(v) for v in confusion["matrix"][-1]) + " |" in report

    plain = run_evaluate(EvaluateConfig(detections=run, ground_truth=gt_uri, out=str(tmp_path / "plain"), diagnostics=False))
    assert "thresholds" not in plain and "confusion" not in plain
    assert not any((tmp_path / "plain" / f).exists() for f in ("thresholds.json", "confusion.png", "thresholds.png"))
    assert "Confusion" not in (tmp_path / "plain" / "report.md").read_text()
    assert {k: plain[k] for k in ("AP", "AP50", "per_category")} == {k: metrics[k] for k in ("AP", "AP50", "per_category")}


def test_diagnostics_flags_set_their_keys():
    args = build_parser().parse_args(["evaluate", "--no-diagnostics", "--confusion-iou", "0.3", "--confusion-score-threshold", "0.25"])
    config = load_job_config(EvaluateConfig, args, EVALUATE_FLAGS)
    assert (config.diagnostics, config.confusion_iou, config.confusion_score_threshold) == (False, 0.3, 0.25)
    default = load_job_config(EvaluateConfig, build_parser().parse_args(["evaluate"]), EVALUATE_FLAGS)
    assert (default.diagnostics, default.confusion_iou, default.confusion_score_threshold) == (True, 0.5, None)
