"""The confusion matrix against a brute-force transcription of its definition (docs/evaluate.md), and against
supervision's ConfusionMatrix where the two definitions agree."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest

from detbatch.metrics import Detections, GroundTruth
from detbatch.metrics.confusion import confusion_matrix

from tests.helpers.oracle import adversarial_coco


def _iou(d, g, crowd):
    """pycocotools' bbIou of two xywh boxes, Python floats."""
    w = min(d[0] + d[2], g[0] + g[2]) - max(d[0], g[0])
    h = min(d[1] + d[3], g[1] + g[3]) - max(d[1], g[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / (d[2] * d[3] if crowd else d[2] * d[3] + g[2] * g[3] - inter)


def _best(d, candidates, iou_t):
    """The candidate of highest IoU >= iou_t, the last of equal ones, or None."""
    best, best_iou = None, -1.0
    for a in candidates:
        v = _iou(d["bbox"], a["bbox"], a.get("iscrowd", 0))
        if v >= iou_t and v >= best_iou:
            best, best_iou = a, v
    return best


def brute_confusion(dataset, dt, threshold, iou_t=0.5):
    """The definition, one image and one detection at a time."""
    cats = sorted(c["id"] for c in dataset["categories"])
    k_of = {c: i for i, c in enumerate(cats)}
    k_n = len(cats)
    out = np.zeros((k_n + 1, k_n + 1), dtype=np.int64)
    anns = defaultdict(list)
    for a in dataset["annotations"]:
        anns[a["image_id"]].append(a)
    dets = defaultdict(list)
    for i in range(len(dt)):
        image, cat, score = int(dt.image_id[i]), int(dt.category_id[i]), float(dt.score[i])
        x1, y1, x2, y2 = (float(v) for v in dt.boxes[i])
        if image not in {im["id"] for im in dataset["images"]} or cat not in k_of:
            continue
        if not all(math.isfinite(v) for v in (score, x1, y1, x2, y2)) or score < threshold[k_of[cat]]:
            continue
        dets[image].append({"cat": cat, "score": score, "xyxy": (x1, y1, x2, y2), "bbox": [x1, y1, x2 - x1, y2 - y1]})
    for im in dataset["images"]:
        image_anns = anns[im["id"]]
        image_dets = sorted(dets[im["id"]], key=lambda d: (-d["score"], *d["xyxy"]))
        taken = set()
        unmatched = []
        for d in image_dets:  # pass 1: same category, regular before crowd
            same = [a for a in image_anns if a["category_id"] == d["cat"]]
            a = _best(d, [a for a in same if not a.get("iscrowd", 0) and id(a) not in taken], iou_t)
            if a is not None:
                taken.add(id(a))
                out[k_of[a["category_id"]], k_of[d["cat"]]] += 1
            elif _best(d, [a for a in same if a.get("iscrowd", 0)], iou_t) is None:
                unmatched.append(d)
        for d in unmatched:  # pass 2: other categories; pass 3: crowd of any category, else background
            others = [a for a in image_anns if a["category_id"] != d["cat"] and not a.get("iscrowd", 0) and id(a) not in taken]
            a = _best(d, others, iou_t)
            if a is not None:
                taken.add(id(a))
                out[k_of[a["category_id"]], k_of[d["cat"]]] += 1
            elif _best(d, [a for a in image_anns if a.get("iscrowd", 0)], iou_t) is None:
                out[k_n, k_of[d["cat"]]] += 1
        for a in image_anns:
            if not a.get("iscrowd", 0) and id(a) not in taken:
                out[k_of[a["category_id"]], k_n] += 1
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("iou", [0.5, 0.3])
def test_equals_brute_force_on_adversarial_data(seed, iou):
    dataset, dt = adversarial_coco(seed)
    gt = GroundTruth.from_coco(dataset)
    rng = np.random.default_rng(seed)
    threshold = rng.uniform(0, 0.8, len(gt.category_ids))
    threshold[0] = np.inf  # a category whose detections are all left out
    np.testing.assert_array_equal(confusion_matrix(gt, dt, threshold, iou), brute_confusion(dataset, dt, threshold, iou))


def test_rows_count_every_regular_ground_truth_once():
    dataset, dt = adversarial_coco(1)
    gt = GroundTruth.from_coco(dataset)
    m = confusion_matrix(gt, dt, np.zeros(len(gt.category_ids)))
    regular = np.bincount(np.searchsorted(gt.category_ids, gt.category_id[~gt.iscrowd]), minlength=len(gt.category_ids))
    np.testing.assert_array_equal(m[:-1].sum(axis=1), regular)
    assert m[-1, -1] == 0


def test_any_split_of_the_images_adds_up_to_the_same_matrix():
    dataset, dt = adversarial_coco(2)
    gt = GroundTruth.from_coco(dataset)
    threshold = np.full(len(gt.category_ids), 0.2)
    whole = confusion_matrix(gt, dt, threshold)
    parts = sum(confusion_matrix(part, dt, threshold) for part in gt.split_images(3))
    np.testing.assert_array_equal(parts, whole)


def _separated_case(seed, k_n=3, images=20):
    """Ground truth on a grid of disjoint boxes; at most one detection near each (same category or not,
    IoU anywhere in (0.2, 1)), and background detections far from all: no detection or ground truth can
    be claimed twice, which is where detbatch's and supervision's matchings agree."""
    rng = np.random.default_rng(seed)
    anns, det_rows, targets, predictions = [], [], [], []
    for image in range(images):
        t_img, p_img = [], []
        for slot in range(int(rng.integers(0, 6))):
            x, y, c = 100.0 * slot, 0.0, int(rng.integers(k_n))
            anns.append({"id": len(anns) + 1, "image_id": image, "category_id": c, "bbox": [x, y, 60.0, 60.0], "area": 3600.0, "iscrowd": 0})
            t_img.append([x, y, x + 60, y + 60, c])
            if rng.random() < 0.8:
                dx, dy = rng.uniform(-25, 25, 2)
                dc = c if rng.random() < 0.6 else int(rng.integers(k_n))
                p_img.append([x + dx, y + dy, x + dx + 60, y + dy + 60, dc, rng.random()])
        for b in range(int(rng.integers(0, 3))):
            p_img.append([100.0 * b, 500.0, 100.0 * b + 40, 540.0, int(rng.integers(k_n)), rng.random()])
        det_rows += [[image, *p] for p in p_img]
        targets.append(np.array(t_img, dtype=np.float64).reshape(-1, 5))
        predictions.append(np.array(p_img, dtype=np.float64).reshape(-1, 6))
    dataset = {
        "images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(images)],
        "categories": [{"id": c, "name": f"c{c}"} for c in range(k_n)],
        "annotations": anns,
    }
    rows = np.array(det_rows, dtype=np.float64).reshape(-1, 7)
    dt = Detections(rows[:, 0].astype(np.int64), rows[:, 5].astype(np.int64), rows[:, 6], rows[:, 1:5])
    return dataset, dt, targets, predictions


@pytest.mark.parametrize("seed", range(4))
def test_equals_supervision_where_the_definitions_agree(seed):
    sv = pytest.importorskip("supervision")
    dataset, dt, targets, predictions = _separated_case(seed)
    theirs = sv.ConfusionMatrix.from_tensors(
        predictions=predictions, targets=targets, classes=["c0", "c1", "c2"], conf_threshold=0.3, iou_threshold=0.5
    ).matrix
    ours = confusion_matrix(GroundTruth.from_coco(dataset), dt, np.full(3, 0.3))
    np.testing.assert_array_equal(ours, theirs)


def test_differs_from_supervision_where_it_matches_by_iou_not_score():
    """Two ground truth of one category; the higher-scored detection overlaps both, best the second, which
    a lower-scored detection overlaps better still. COCO's greedy order (score) lets the first take the
    second ground truth: one match, one background, one missed. supervision orders pairs by IoU: two matches."""
    sv = pytest.importorskip("supervision")
    dataset = {
        "images": [{"id": 0, "file_name": "0.jpg"}],
        "categories": [{"id": 0, "name": "c0"}],
        "annotations": [
            {"id": 1, "image_id": 0, "category_id": 0, "bbox": [0.0, 0.0, 10.0, 10.0], "area": 100.0, "iscrowd": 0},
            {"id": 2, "image_id": 0, "category_id": 0, "bbox": [4.0, 0.0, 10.0, 10.0], "area": 100.0, "iscrowd": 0},
        ],
    }
    boxes = np.array([[3.0, 0.0, 13.0, 10.0], [4.0, 0.0, 14.0, 10.0]])  # IoUs 0.54, 0.82; 0.43, 1
    dt = Detections(np.array([0, 0]), np.array([0, 0]), np.array([0.9, 0.8]), boxes)
    ours = confusion_matrix(GroundTruth.from_coco(dataset), dt, np.zeros(1))
    assert ours.tolist() == [[1, 1], [1, 0]]
    theirs = sv.ConfusionMatrix.from_tensors(
        predictions=[np.c_[boxes, [0, 0], [0.9, 0.8]]], targets=[np.array([[0, 0, 10, 10, 0], [4, 0, 14, 10, 0]], float)],
        classes=["c0"], conf_threshold=0.0, iou_threshold=0.5,
    ).matrix
    assert theirs.tolist() == [[2, 0], [0, 0]]


def test_no_ground_truth_or_no_detections():
    dataset, dt = adversarial_coco(4)
    gt = GroundTruth.from_coco(dataset)
    k_n = len(gt.category_ids)
    none = dt.take(np.zeros(len(dt), dtype=bool))
    missed = confusion_matrix(gt, none, np.zeros(k_n))
    assert missed[:, :-1].sum() == 0 and missed[:-1, -1].sum() == (~gt.iscrowd).sum()
    empty = GroundTruth.from_coco({**dataset, "annotations": []})
    background = confusion_matrix(empty, dt, np.zeros(k_n))
    assert background[:-1].sum() == 0 and background[-1].sum() == brute_confusion({**dataset, "annotations": []}, dt, np.zeros(k_n))[-1].sum()
