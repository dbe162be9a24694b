"""detbatch.metrics COCO evaluation against pycocotools, the metric of record."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detbatch.metrics import (
    Detections,
    GroundTruth,
    MatchRecords,
    count_ground_truth,
    evaluate_coco,
    match_images,
    reduce,
)
from detbatch.metrics import coco
from detbatch.metrics.boxes import pairwise_iou, xyxy_to_xywh

from tests.helpers.oracle import adversarial_coco, per_category_ap, pycocotools_eval, pycocotools_eval_results, results_list


def assert_same_as_pycocotools(dataset, dt, result=None):
    ev = pycocotools_eval(dataset, dt)
    result = result or evaluate_coco(GroundTruth.from_coco(dataset), dt)
    np.testing.assert_allclose(result.stats, ev.stats, rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.precision, ev.eval["precision"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.recall, ev.eval["recall"], rtol=0, atol=1e-12)
    ours = {row["category_id"]: row["AP"] for row in result.per_category()}
    for cat, ap in per_category_ap(ev).items():
        assert ours[cat] == pytest.approx(ap, abs=1e-9), cat
    return ev


@pytest.mark.parametrize("seed", range(16))
def test_adversarial_data_equals_pycocotools(seed):
    dataset, dt = adversarial_coco(seed)
    assert_same_as_pycocotools(dataset, dt)


def _dataset(anns, n_images=2, categories=(1, 2)):
    images = [{"id": i + 1, "file_name": f"{i + 1}.jpg"} for i in range(n_images)]
    cats = [{"id": c, "name": f"c{c}"} for c in categories]
    full = [{"id": i + 1, "iscrowd": 0, **a} for i, a in enumerate(anns)]
    for a in full:
        a.setdefault("area", a["bbox"][2] * a["bbox"][3])
    return {"images": images, "categories": cats, "annotations": full}


def _dets(rows):
    return Detections(
        image_id=np.array([r[0] for r in rows]),
        category_id=np.array([r[1] for r in rows]),
        score=np.array([r[2] for r in rows], dtype=np.float32),
        boxes=np.array([r[3] for r in rows], dtype=np.float32).reshape(-1, 4),
    )


# Each case isolates one rule of COCOeval; the whole evaluation is compared with pycocotools.
CASES = {
    # 10x10 gt, 10x20 detection over it: IoU exactly 0.5 (>= matches); 0.75 only for the second image.
    "iou_exactly_on_threshold": (
        [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]}, {"image_id": 2, "category_id": 1, "bbox": [0, 0, 30, 10]}],
        [(1, 1, 0.9, [0, 0, 10, 20]), (2, 1, 0.8, [0, 0, 40, 10])],
    ),
    # Inside a crowd region: IoU over the detection's own area (1.0), so the detection is ignored, not false.
    "crowd_region": (
        [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "iscrowd": 1}, {"image_id": 1, "category_id": 1, "bbox": [200, 200, 10, 10]}],
        [(1, 1, 0.9, [10, 10, 30, 30]), (1, 1, 0.8, [40, 40, 60, 60]), (1, 1, 0.7, [200, 200, 210, 210])],
    ),
    # One ground truth per pair (the closed-form path): the first detection reaching each threshold takes
    # it; a lone crowd region takes every detection reaching the threshold.
    "single_ground_truth": (
        [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20]}, {"image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 40], "iscrowd": 1}],
        [(1, 1, 0.9, [0, 0, 20, 30]), (1, 1, 0.8, [0, 0, 20, 20]), (1, 1, 0.7, [0, 0, 20, 22]),
         (2, 1, 0.9, [0, 0, 10, 10]), (2, 1, 0.6, [30, 30, 50, 50]), (1, 1, 0.5, [100, 100, 120, 120])],
    ),
    # `area` decides small/medium/large, not w*h; 32**2 and 96**2 belong to both neighbouring ranges.
    "area_field_and_boundaries": (
        [
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 32.0**2},
            {"image_id": 1, "category_id": 1, "bbox": [100, 100, 20, 20], "area": 96.0**2},
            {"image_id": 2, "category_id": 1, "bbox": [0, 0, 32, 32]},
        ],
        [(1, 1, 0.9, [0, 0, 50, 50]), (1, 1, 0.8, [100, 100, 120, 120]), (2, 1, 0.7, [0, 0, 32, 32]), (2, 1, 0.6, [300, 300, 396, 396])],
    ),
    # 130 detections on one image and category: maxDets keeps the best 100 (and 1, 10).
    "more_than_100_detections": (
        [{"image_id": 1, "category_id": 1, "bbox": [i * 3, 0, 3, 3]} for i in range(60)],
        [(1, 1, 0.01 * (i % 50), [i * 3, 0, i * 3 + 3, 3]) for i in range(130)],
    ),
    # Category 2 only in detections, category 1 only in ground truth; image 2 without ground truth;
    # category 7 is not a ground-truth category (dropped).
    "one_sided_categories_and_images": (
        [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]}],
        [(1, 2, 0.9, [0, 0, 10, 10]), (2, 2, 0.5, [0, 0, 5, 5]), (1, 7, 0.99, [0, 0, 10, 10])],
    ),
    # IoU of exactly 1 with two identical ground truths: the last of equal IoUs wins, the second
    # detection takes the other.
    "duplicate_ground_truth": (
        [{"image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10]}, {"image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10]}],
        [(1, 1, 0.9, [5, 5, 15, 15]), (1, 1, 0.9, [5, 5, 15, 15]), (1, 1, 0.9, [5, 5, 15, 15])],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_cases_equal_pycocotools(case):
    anns, rows = CASES[case]
    assert_same_as_pycocotools(_dataset(anns), _dets(rows))


def test_crowd_region_ignores_detections_inside_it():
    anns, rows = CASES["crowd_region"]
    result = evaluate_coco(GroundTruth.from_coco(_dataset(anns)), _dets(rows))
    # One real ground truth, found by the third detection; the two in the crowd are not false positives.
    assert result.stats_dict()["AP50"] == pytest.approx(1.0)


def test_score_ties_follow_the_defined_order():
    """Equal scores: pycocotools keeps the results-list order within an image (across images, image id
    order); detbatch's order is x_min, y_min, x_max, y_max. Another order gives another AP here, so the
    test can fail."""
    anns = [{"image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10]}]
    rows = [(1, 1, 0.5, [5, 5, 15, 15]), (1, 1, 0.5, [0, 50, 10, 60])]  # true positive, false positive
    dataset, dt = _dataset(anns, n_images=1), _dets(rows)
    ours = evaluate_coco(GroundTruth.from_coco(dataset), dt)
    assert_same_as_pycocotools(dataset, dt, ours)
    assert ours.stats_dict()["AP50"] == pytest.approx(0.5)  # the false positive (x_min 0) comes first
    reversed_order = pycocotools_eval_results(dataset, results_list(dt)[::-1])
    assert reversed_order.stats[1] == pytest.approx(1.0)


def test_partition_and_order_do_not_change_the_result():
    dataset, dt = adversarial_coco(5, n_images=60)
    gt = GroundTruth.from_coco(dataset)
    whole = evaluate_coco(gt, dt)
    rng = np.random.default_rng(0)
    for _ in range(3):
        group = rng.integers(0, 7, len(gt.image_ids))
        parts = []
        for g in rng.permutation(7):
            images = gt.image_ids[group == g]
            rows = np.flatnonzero(np.isin(dt.image_id, images))
            parts.append(match_images(gt.select_images(images), dt.take(rng.permutation(rows))))
        records = MatchRecords.concat(parts)
        records = records.take(rng.permutation(len(records)))
        split = reduce(records, gt.category_ids, count_ground_truth(gt))
        assert split.stats.tobytes() == whole.stats.tobytes()
        assert split.precision.tobytes() == whole.precision.tobytes()


@pytest.mark.parametrize("chunk_elements", [1, coco.NUM_AREAS * coco.NUM_THRESHOLDS * 24])
def test_chunks_of_the_matching_do_not_change_the_records(monkeypatch, chunk_elements):
    """One pair per chunk, or 24 ground-truth slots (12 pairs of 2, 6 of 4): the same records as the
    default chunks, which hold all the pairs of one width of these data at once."""
    dataset, dt = adversarial_coco(4, n_images=60)
    gt = GroundTruth.from_coco(dataset)
    whole = match_images(gt, dt)
    monkeypatch.setattr(coco, "MATCH_CHUNK_ELEMENTS", chunk_elements)
    chunked = match_images(gt, dt)
    for name, column in whole.columns().items():
        assert getattr(chunked, name).tobytes() == column.tobytes(), name


def test_iou_is_bit_identical_to_pycocotools():
    from pycocotools import mask

    rng = np.random.default_rng(1)
    dt = xyxy_to_xywh(np.sort(rng.uniform(0, 100, (50, 2, 2)), axis=1).transpose(0, 2, 1).reshape(50, 4).astype(np.float32))
    gt = rng.uniform(0, 60, (20, 4))
    crowd = rng.random(20) < 0.3
    expected = mask.iou(dt.tolist(), gt.tolist(), crowd.astype(np.uint8).tolist())
    assert pairwise_iou(dt, gt, crowd).tobytes() == np.asarray(expected, dtype=np.float64).tobytes()


@pytest.mark.parametrize("min_iou", [0.1, 0.5, 0.75])
def test_overlapping_pairs_keep_exactly_the_pairs_that_reach_with_pycocotools_bits(min_iou):
    """The sparse IoU of the TIDE and confusion maps: the same pairs and bits as pycocotools' dense matrix,
    on boxes with shared edges (apart by 0 px along x or y) and crowds."""
    from pycocotools import mask

    from detbatch.metrics.boxes import overlapping_pairs

    rng = np.random.default_rng(2)
    dt = xyxy_to_xywh(np.sort(rng.integers(0, 40, (60, 2, 2)), axis=1).transpose(0, 2, 1).reshape(60, 4).astype(np.float32))
    gt = rng.integers(0, 30, (25, 4)).astype(np.float64) + 1
    crowd = rng.random(25) < 0.3
    dense = np.asarray(mask.iou(dt.tolist(), gt.tolist(), crowd.astype(np.uint8).tolist()), dtype=np.float64)
    det, gts = np.repeat(np.arange(60), 25), np.tile(np.arange(25), 60)
    at, iou = overlapping_pairs(dt, gt, det, gts, min_iou, crowd)
    expected = np.flatnonzero(dense.ravel() >= min_iou)
    assert 0 < len(expected) < len(det)
    assert at.tolist() == expected.tolist()
    assert iou.tobytes() == dense.ravel()[expected].tobytes()


def test_coco128_real_ground_truth_with_perturbed_detections(coco128):
    dataset = json.loads((coco128 / "annotations" / "instances.json").read_text())
    rng = np.random.default_rng(0)
    cats = [c["id"] for c in dataset["categories"]]
    rows = []
    for a in dataset["annotations"]:
        for _ in range(rng.integers(0, 4)):
            x, y, w, h = a["bbox"]
            j = rng.normal(0, 0.08, 4) * [w, h, w, h]
            cat = a["category_id"] if rng.random() < 0.9 else int(rng.choice(cats))
            rows.append((a["image_id"], cat, round(rng.random(), 2), [x + j[0], y + j[1], x + w + j[2], y + h + j[3]]))
    for im in dataset["images"]:
        for _ in range(rng.integers(0, 15)):
            x, y = rng.random(2) * [im["width"], im["height"]]
            w, h = rng.random(2) * 200
            rows.append((im["id"], int(rng.choice(cats)), round(rng.random() * 0.5, 2), [x, y, x + w, y + h]))
    ev = assert_same_as_pycocotools(dataset, _dets(rows))
    assert 0.2 < ev.stats[0] < 0.9  # a meaningful score, not a degenerate one
