"""Precision/recall/F1 by score threshold and the F1-optimal thresholds, against counts taken from
pycocotools' own per-image matching (``COCOeval.evalImgs``), and against pycocotools rerun on the
detections above a threshold."""

from __future__ import annotations

import numpy as np
import pytest

from detbatch.metrics import GroundTruth, count_ground_truth, match_images
from detbatch.metrics import thresholds
from detbatch.metrics.grouping import accumulate_by_category
from detbatch.metrics.thresholds import (
    SCORE_GRID,
    THRESHOLD_IOUS,
    accumulate_with_thresholds,
    combine_with_thresholds,
    confusion_score_thresholds,
    score_thresholds,
    thresholds_dict,
)

from tests.helpers.oracle import adversarial_coco, pycocotools_eval


def _ours(dataset, dt):
    gt = GroundTruth.from_coco(dataset)
    counts = count_ground_truth(gt)
    parts = accumulate_by_category(match_images(gt, dt), gt.category_ids, counts, accumulate_with_thresholds)
    return combine_with_thresholds(gt.category_ids, counts, parts)


def _oracle_records(ev, k, t):
    """(score, true positive, counted) of category ``k``'s detections at IoU index ``t``, area all,
    maxDets 100, and its counted ground truth: from pycocotools' evalImgs."""
    n_img, n_area = len(ev.params.imgIds), len(ev.params.areaRng)
    scores, tps, live, num_gt = [], [], [], 0
    for e in ev.evalImgs[k * n_area * n_img : k * n_area * n_img + n_img]:  # area "all" comes first
        if e is None:
            continue
        num_gt += int((~np.asarray(e["gtIgnore"], dtype=bool)).sum())
        ignored = np.asarray(e["dtIgnore"])[t].astype(bool)
        scores += list(e["dtScores"])
        tps += list((np.asarray(e["dtMatches"])[t] > 0) & ~ignored)
        live += list(~ignored)
    return np.array(scores, dtype=np.float64), np.array(tps, dtype=bool), np.array(live, dtype=bool), num_gt


def _brute_best(score, tp, live, num_gt):
    """The F1-optimal threshold, trying every distinct score (the highest of equal F1s)."""
    best = (np.nan, 0.0, 0.0, 0.0)
    for s in sorted(set(score.tolist()), reverse=True):
        kept = score >= s
        n_tp, n_fp = int((tp & kept).sum()), int((live & ~tp & kept).sum())
        f1 = 2 * n_tp / (n_tp + n_fp + num_gt)
        if f1 > best[3]:
            best = (s, n_tp / (n_tp + n_fp), n_tp / num_gt, f1)
    return best


@pytest.mark.parametrize("f1_chunk", [None, 2])  # 2: the F1 sweep in many pieces, equal F1s across their edges
@pytest.mark.parametrize("seed", range(5))
def test_best_thresholds_and_counts_equal_pycocotools_matching(seed, f1_chunk, monkeypatch):
    if f1_chunk:
        monkeypatch.setattr(thresholds, "F1_CHUNK", f1_chunk)
    dataset, dt = adversarial_coco(seed)
    ev = pycocotools_eval(dataset, dt)
    result = _ours(dataset, dt)
    for u, iou in enumerate(THRESHOLD_IOUS):
        t = int(np.flatnonzero(np.isclose(ev.params.iouThrs, iou))[0])
        for k, cat in enumerate(ev.params.catIds):
            ours = result.thresholds[k]
            score, tp, live, num_gt = _oracle_records(ev, k, t)
            assert ours.num_gt == num_gt
            for s in (0, 250, 500, 900, 1000):
                kept = score >= SCORE_GRID[s]
                assert ours.tp[u, s] == (tp & kept).sum() and ours.fp[u, s] == (live & ~tp & kept).sum()
            expected = _brute_best(score, tp, live, num_gt) if num_gt else (np.nan, 0.0, 0.0, 0.0)
            np.testing.assert_allclose(ours.best[u], expected, rtol=0, atol=1e-12, equal_nan=True, err_msg=f"{cat} {iou}")


def test_recall_at_a_threshold_equals_pycocotools_on_the_detections_above_it():
    """Cutting at a score changes no match of the detections kept: pycocotools on the kept ones alone has
    the same recall at IoU 0.5 as the counts above the threshold."""
    dataset, dt = adversarial_coco(7)
    result = _ours(dataset, dt)
    for s in (300, 600):
        ev = pycocotools_eval(dataset, dt.take(dt.score >= SCORE_GRID[s]))
        for k in range(len(result.category_ids)):
            c = result.thresholds[k]
            if c.num_gt:
                assert ev.eval["recall"][0, k, 0, 2] == pytest.approx(c.tp[0, s] / c.num_gt, abs=1e-12)


def test_overall_best_is_the_grid_point_of_best_summed_f1_and_thresholds_json_follow():
    dataset, dt = adversarial_coco(3)
    result = _ours(dataset, dt)
    tp = sum(c.tp[0] for c in result.thresholds)
    fp = sum(c.fp[0] for c in result.thresholds)
    num_gt = sum(c.num_gt for c in result.thresholds)
    f1 = 2 * tp / (tp + fp + num_gt)
    i = max(range(len(SCORE_GRID)), key=lambda j: (f1[j], j))
    out = thresholds_dict(result.category_ids, result.thresholds)
    assert out["overall"]["0.50"]["best"]["threshold"] == SCORE_GRID[i]
    assert out["overall"]["0.50"]["best"]["f1"] == pytest.approx(f1[i], abs=1e-12)
    assert len(out["scores"]) == len(out["overall"]["0.75"]["f1"]) == 101
    per, default = score_thresholds(result.category_ids, result.thresholds)
    assert default == SCORE_GRID[i]
    assert per == {int(k): c.best[0, 0] for k, c in zip(result.category_ids, result.thresholds) if not np.isnan(c.best[0, 0])}
    used = confusion_score_thresholds(result.category_ids, result.thresholds, None)
    assert used.tolist() == [per.get(int(k), default) for k in result.category_ids]
    assert confusion_score_thresholds(result.category_ids, result.thresholds, 0.4).tolist() == [0.4] * len(used)


def test_a_category_without_detections_or_ground_truth_has_no_threshold():
    dataset, dt = adversarial_coco(0)
    gone = int(dataset["categories"][0]["id"])
    result = _ours(dataset, dt.take(dt.category_id != gone))
    assert np.isnan(result.thresholds[0].best[:, 0]).all() and (result.thresholds[0].tp == 0).all()
    assert gone not in score_thresholds(result.category_ids, result.thresholds)[0]
