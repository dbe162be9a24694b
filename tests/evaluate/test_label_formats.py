"""``evaluate`` against VOC XML or YOLO txt ground truth equals ``evaluate`` against the same labels as
COCO JSON, and both equal pycocotools on that JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detbatch.datasets.convert import convert
from detbatch.datasets.synth import synthesize
from detbatch.evaluate import EvaluateConfig, run_evaluate
from detbatch.metrics import Detections

from tests.evaluate.runs import assert_equals_pycocotools, without_execution
from tests.helpers.detect_output import write_detect_output


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> dict:
    """16 synthetic images with a few crowds; VOC and YOLO labels of them; the COCO JSON read back from the
    VOC labels; and a detect output of noisy boxes that pairs by file name."""
    root = tmp_path_factory.mktemp("gt-formats")
    synthesize(str(root / "ds"), 16, seed=8, image_size=96, max_objects=3)
    coco = json.loads((root / "ds" / "annotations.json").read_text())
    for ann in coco["annotations"][::6]:
        ann["iscrowd"] = 1  # VOC writes them difficult: regions evaluation ignores
    (root / "ds" / "annotations.json").write_text(json.dumps(coco))
    images = str(root / "ds" / "images")
    voc = convert(str(root / "ds" / "annotations.json"), str(root / "voc"), "voc", images=images).labels_uri
    yolo = convert(str(root / "ds" / "annotations.json"), str(root / "yolo"), "yolo", images=images).labels_uri
    from_voc = convert(voc, str(root / "from-voc"), "coco", images=images).labels_uri
    from_yolo = convert(yolo, str(root / "from-yolo"), "coco", images=images).labels_uri

    dataset = json.loads(Path(from_voc).read_text())
    rng = np.random.default_rng(0)
    rows = []
    for ann in dataset["annotations"]:
        if rng.random() < 0.85:  # found, a little off, sometimes as the wrong class
            x, y, w, h = np.asarray(ann["bbox"]) + rng.normal(0, 1.5, 4)
            category = ann["category_id"] if rng.random() < 0.9 else 1 + ann["category_id"] % 3
            rows.append((ann["image_id"], category, rng.random(), [x, y, x + w, y + h]))
    for _ in range(20):  # false positives
        x, y = rng.uniform(0, 80, 2)
        rows.append((int(rng.integers(1, 17)), int(rng.integers(1, 4)), rng.random() * 0.6, [x, y, x + 12, y + 12]))
    dt = Detections(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), np.array([r[2] for r in rows], dtype=np.float32),
                    np.array([r[3] for r in rows], dtype=np.float32))  # fmt: skip
    run_images = [{"image_id": im["id"], "uri": f"{images}/{im['file_name']}", "width": 96, "height": 96} for im in dataset["images"]]
    write_detect_output(str(root / "run"), dt, run_images, input_uri=images, manifest=None)  # pairs by file name
    return {"root": root, "images": images, "voc": voc, "yolo": yolo, "from_voc": from_voc, "from_yolo": from_yolo,
            "dataset": dataset, "dt": dt, "run": str(root / "run")}  # fmt: skip


def evaluate(labelled: dict, ground_truth: str, out: str, **kw) -> dict:
    metrics = run_evaluate(EvaluateConfig(detections=labelled["run"], ground_truth=ground_truth, out=str(labelled["root"] / out), **kw))
    return without_execution(metrics) | {"inputs": None}


@pytest.mark.parametrize("metric", ["coco", "voc"])
def test_voc_ground_truth_equals_its_coco_json_and_pycocotools(labelled, metric):
    from_xml = evaluate(labelled, labelled["voc"], f"voc-{metric}", images=labelled["images"], metric=metric)
    from_json = evaluate(labelled, labelled["from_voc"], f"json-{metric}", metric=metric)
    assert from_xml == from_json
    assert from_json["pairing"]["gt_images_paired"] == 16 and from_json["pairing"]["run_images_paired"] == 16
    if metric == "coco":
        assert_equals_pycocotools(from_json, labelled["dataset"], labelled["dt"])
        assert sum(a["iscrowd"] for a in labelled["dataset"]["annotations"]) > 0  # the crowds are in play


def test_yolo_ground_truth_equals_its_coco_json_and_pycocotools(labelled):
    from_txt = evaluate(labelled, labelled["yolo"], "yolo", annotations_format="yolo", images=labelled["images"])
    from_json = evaluate(labelled, labelled["from_yolo"], "yolo-json")
    assert from_txt == from_json
    assert_equals_pycocotools(from_json, json.loads(Path(labelled["from_yolo"]).read_text()), labelled["dt"])


def test_label_problems_are_counted_in_metrics(labelled, tmp_path):
    import shutil

    voc = tmp_path / "Annotations"
    shutil.copytree(labelled["voc"], voc)
    (voc / "000003.xml").write_text("<annotation>")  # will not parse: image 3 is left out
    metrics = evaluate(labelled, str(voc), "problems", images=labelled["images"])
    assert metrics["ground_truth"]["label_problems"] == {"unparsable": 1}
    assert metrics["ground_truth"]["images"] == 15
