"""The diagnostics of ``detbatch evaluate`` (COCO): thresholds in metrics.json, thresholds.json, the
confusion matrix, the TIDE error breakdown, and the flags that set them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detbatch.cli import EVALUATE_FLAGS, build_parser, load_job_config
from detbatch.errors import InputError
from detbatch.evaluate import EvaluateConfig, run_evaluate
from detbatch.metrics import GroundTruth
from detbatch.metrics.coco import matching
from detbatch.metrics.confusion import confusion_matrix
from detbatch.metrics.tide import errors_dict, evaluate_errors

from tests.evaluate.runs import setup_run
from tests.helpers.oracle import pycocotools_eval


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

    errors = metrics["errors"]  # the TIDE breakdown of the same records (tests/metrics/test_tide.py: its maths)
    expected_errors = errors_dict(evaluate_errors(gt, matching(gt, dt)), names)
    assert errors == json.loads(json.dumps(expected_errors))
    assert errors["AP50"] == pytest.approx(metrics["AP50"], abs=1e-15) and sum(errors["counts"].values()) > 0

    for png in ("confusion.png", "thresholds.png", "errors.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "## Score thresholds (F1-optimal)" in report and "## Confusion matrix" in report
    assert "| background | " + " | ".join(str(v) for v in confusion["matrix"][-1]) + " |" in report
    assert "## Error breakdown (TIDE)" in report
    assert "| dAP | " + " | ".join(f"{errors['dAP'][e]:.4f}" for e in errors["dAP"]) + " |" in report

    plain = run_evaluate(EvaluateConfig(detections=run, ground_truth=gt_uri, out=str(tmp_path / "plain"), diagnostics=False))
    assert "thresholds" not in plain and "confusion" not in plain and "errors" not in plain
    assert not any((tmp_path / "plain" / f).exists() for f in ("thresholds.json", "confusion.png", "thresholds.png", "errors.png"))
    assert "Confusion" not in (tmp_path / "plain" / "report.md").read_text()
    assert {k: plain[k] for k in ("AP", "AP50", "per_category")} == {k: metrics[k] for k in ("AP", "AP50", "per_category")}


def test_diagnostics_flags_set_their_keys():
    args = build_parser().parse_args(["evaluate", "--no-diagnostics", "--confusion-iou", "0.3", "--confusion-score-threshold", "0.25",
                                      "--slice-by", "site", "--slice-by", "num_objects", "--slice-metadata", "m.csv"])
    config = load_job_config(EvaluateConfig, args, EVALUATE_FLAGS)
    assert (config.diagnostics, config.confusion_iou, config.confusion_score_threshold) == (False, 0.3, 0.25)
    assert (config.slice_by, config.slice_metadata) == (["site", "num_objects"], "m.csv")
    default = load_job_config(EvaluateConfig, build_parser().parse_args(["evaluate"]), EVALUATE_FLAGS)
    assert (default.diagnostics, default.confusion_iou, default.confusion_score_threshold) == (True, 0.5, None)


def test_slices_by_metadata_images_table_and_derived_equal_pycocotools_on_each_slice(tmp_path):
    dataset, dt, gt_uri, run = setup_run(str(tmp_path))
    uris = {im["id"]: f"s3://data/images/{im['file_name']}" for im in dataset["images"]}  # as setup_run writes them
    site = {i: ("north" if n % 3 else "south") for n, i in enumerate(sorted(uris))}
    meta = tmp_path / "meta.csv"
    meta.write_text("uri,site\n" + "".join(f"{uris[i]},{s}\n" for i, s in site.items() if i % 5))  # some images without
    config = EvaluateConfig(detections=run, ground_truth=gt_uri, out=str(tmp_path / "e"), diagnostics=False,
                            slice_by=["site", "num_objects", "status"], slice_metadata=str(meta))
    slices = run_evaluate(config)["slices"]
    assert f"| site=north | {slices['site=north']['images']} | " in (tmp_path / "e" / "report.md").read_text()
    regular = {}
    for a in dataset["annotations"]:
        regular[a["image_id"]] = regular.get(a["image_id"], 0) + (not a.get("iscrowd", 0))
    expected_members = {f"site={s}": [i for i in uris if i % 5 and site[i] == s] for s in ("north", "south")}
    expected_members["num_objects=0"] = [i for i in uris if regular.get(i, 0) == 0]
    expected_members["status=ok"] = list(uris)
    assert set(expected_members) <= set(slices)
    for name, ids in expected_members.items():
        sub = {"images": [im for im in dataset["images"] if im["id"] in ids], "categories": dataset["categories"],
               "annotations": [a for a in dataset["annotations"] if a["image_id"] in ids]}
        ev = pycocotools_eval(sub, dt.take(np.isin(dt.image_id, ids)))
        assert [slices[name][k] for k in ("AP", "AP50", "AR100")] == [ev.stats[0], ev.stats[1], ev.stats[8]], name
        assert slices[name]["images"] == len(ids)


def test_slice_by_an_unknown_column_names_it_and_where_it_looked(tmp_path):
    _, _, gt_uri, run = setup_run(str(tmp_path))
    with pytest.raises(InputError, match=r"--slice-by camera: not a column .*\(--slice-metadata FILE"):
        run_evaluate(EvaluateConfig(detections=run, ground_truth=gt_uri, out=str(tmp_path / "e"), slice_by=["camera"]))
