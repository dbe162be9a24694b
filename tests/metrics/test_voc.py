"""detbatch.metrics.voc against the VOC devkit's voc_eval loop."""

from __future__ import annotations

import numpy as np
import pytest

from detbatch.metrics import Detections, GroundTruth
from detbatch.metrics.voc import evaluate_voc

from tests.helpers.oracle import adversarial_coco, classic_voc_eval


@pytest.mark.parametrize("plus_one", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_adversarial_data_equals_classic_voc_eval(seed, plus_one):
    dataset, dt = adversarial_coco(seed)
    rng = np.random.default_rng(seed)
    for a in dataset["annotations"]:
        if rng.random() < 0.1:
            a["difficult"] = 1
    expected = classic_voc_eval(dataset, dt, plus_one)
    result = evaluate_voc(GroundTruth.from_coco(dataset), dt, plus_one)
    for k, cat in enumerate(result.category_ids.tolist()):
        if cat in expected:
            assert (result.ap[k], result.ap11[k]) == pytest.approx(expected[cat], abs=1e-12), cat
        else:
            assert result.ap[k] == -1 and result.ap11[k] == -1
    assert result.mean_ap == pytest.approx(np.mean([v[0] for v in expected.values()]), abs=1e-12)


def _one_image(anns, rows):
    dataset = {
        "images": [{"id": 1, "file_name": "1.jpg"}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "area": 1.0, **a} for i, a in enumerate(anns)],
    }
    dt = Detections(
        np.ones(len(rows), dtype=np.int64), np.ones(len(rows), dtype=np.int64),
        np.array([r[0] for r in rows], dtype=np.float32), np.array([r[1] for r in rows], dtype=np.float32),
    )  # fmt: skip
    return GroundTruth.from_coco(dataset), dt


def test_difficult_ground_truth_is_neither_found_nor_missed():
    gt, dt = _one_image(
        [{"bbox": [0, 0, 10, 10]}, {"bbox": [50, 50, 10, 10], "difficult": 1}],
        [(0.9, [50, 50, 60, 60]), (0.8, [0, 0, 10, 10])],  # the difficult one first: ignored, not false
    )
    result = evaluate_voc(gt, dt)
    assert result.ap[0] == pytest.approx(1.0)
    assert result.num_gt[0] == 1


def test_iou_of_exactly_one_half_is_not_a_match():
    gt, dt = _one_image([{"bbox": [0, 0, 10, 10]}], [(0.9, [0, 0, 10, 20])])  # IoU 100/200
    assert evaluate_voc(gt, dt).ap[0] == 0.0
    gt, dt = _one_image([{"bbox": [0, 0, 10, 10]}], [(0.9, [0, 0, 10, 19])])  # IoU 100/190
    assert evaluate_voc(gt, dt).ap[0] == pytest.approx(1.0)
