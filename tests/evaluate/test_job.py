"""detbatch.evaluate end to end: detect-style outputs on local disk and S3, the CLI and the Ray job."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detbatch import storage
from detbatch.evaluate import EvaluateConfig, run_evaluate, summary_lines

from tests.evaluate.runs import assert_equals_pycocotools, setup_run, without_execution

REPO = Path(__file__).resolve().parents[2]


def test_local_run_equals_pycocotools_and_writes_outputs(tmp_path):
    dataset, dt, gt_uri, run = setup_run(str(tmp_path))
    out = tmp_path / "eval"
    metrics = run_evaluate(EvaluateConfig(detections=run, ground_truth=gt_uri, out=str(out)))
    assert_equals_pycocotools(metrics, dataset, dt)
    assert metrics["execution"]["engine"] == "local"
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert (out / "pr_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert summary_lines(metrics)[0] in report
    pairing = metrics["pairing"]
    known_category = np.isin(dt.category_id, [c["id"] for c in dataset["categories"]])
    assert pairing["mode"] == "image_id"
    assert pairing["detections"] == len(dt)
    assert pairing["detections_unpaired"] == 1  # adversarial_coco adds one on an unknown image
    assert pairing["detections_unknown_category"] == int((~known_category).sum())
    assert pairing["detections_evaluated"] == len(dt) - 1 - int((~known_category).sum())
    assert pairing["gt_images_paired"] == pairing["gt_images"] == len(dataset["images"])


def test_summary_lines_have_pycocotools_format(tmp_path):
    _, _, gt_uri, run = setup_run(str(tmp_path))
    lines = summary_lines(run_evaluate(EvaluateConfig(detections=run, ground_truth=gt_uri, out=str(tmp_path / "e"))))
    assert len(lines) == 12
    assert lines[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.")
    assert lines[11].startswith(" Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ] = 0.")


def test_voc_metric(tmp_path):
    _, _, gt_uri, run = setup_run(str(tmp_path))
    metrics = run_evaluate(EvaluateConfig(detections=run, ground_truth=gt_uri, out=str(tmp_path / "e"), metric="voc"))
    assert metrics["metric"] == "voc" and 0 < metrics["mAP"] < 1
    assert set(next(iter(metrics["per_category"].values()))) == {"category_id", "AP", "AP_11point", "num_gt", "num_detections"}
    assert len(summary_lines(metrics)) == 2


def test_result_does_not_depend_on_files_row_groups_or_row_order(tmp_path):
    results = set()
    for i, (files, row_group_size) in enumerate([(1, None), (7, 5), (23, 3)]):
        _, _, gt_uri, run = setup_run(str(tmp_path / str(i)), files=files, seed=i, row_group_size=row_group_size)
        metrics = run_evaluate(EvaluateConfig(detections=run, ground_truth=gt_uri, out=str(tmp_path / f"e{i}")))
        results.add(json.dumps(without_execution(metrics) | {"inputs": None}, sort_keys=True))
    assert len(results) == 1


def test_s3_inputs_and_outputs(s3_bucket):
    dataset, dt, gt_uri, run = setup_run(s3_bucket)
    out = f"{s3_bucket}/eval"
    metrics = run_evaluate(EvaluateConfig(detections=run, ground_truth=gt_uri, out=out))
    assert_equals_pycocotools(metrics, dataset, dt)
    assert json.loads(storage.read_text(f"{out}/metrics.json")) == metrics
    assert storage.read_bytes(f"{out}/pr_curves.png")[:4] == b"\x89PNG"


@pytest.mark.slow
def test_job_entrypoint(ray_cluster, tmp_path):
    _, _, gt_uri, run = setup_run(str(tmp_path))
    cmd = [sys.executable, str(REPO / "jobs" / "evaluate.py"), "--detections", run, "--out", str(tmp_path / "e"), "--ray-address", ray_cluster.address]
    done = subprocess.run([*cmd, "--ground-truth", gt_uri], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    lines = [l for l in done.stdout.splitlines() if l.startswith(" Average")]
    assert lines == summary_lines(json.loads((tmp_path / "e" / "metrics.json").read_text()))
    failed = subprocess.run([*cmd, "--ground-truth", str(tmp_path / "missing.json")], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert failed.returncode != 0 and "missing.json" in failed.stderr


def test_cli_evaluate_prints_the_summary(tmp_path, capsys):
    from detbatch.cli import main

    _, _, gt_uri, run = setup_run(str(tmp_path))
    assert main(["evaluate", "--detections", run, "--ground-truth", gt_uri, "--out", str(tmp_path / "e")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:12] == summary_lines(json.loads((tmp_path / "e" / "metrics.json").read_text()))
    assert main(["evaluate", "--detections", run, "--ground-truth", str(tmp_path / "missing.json"), "--out", str(tmp_path / "f")]) != 0
