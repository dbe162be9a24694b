"""Precision, recall and F1 as a function of the score threshold, and the F1-optimal threshold, from the
COCO match records (docs/evaluate.md, "Thresholds").

Keeping the detections of score >= s changes no match of those kept: COCO matches greedily by score, so a
detection's match depends only on the detections above it in its (image, category). The true and false
positives at threshold ``s`` are therefore the records of score >= s, as matched (area ``all``, maxDets
100, the IoU threshold's bit); ignored records (matched to a crowd) count as neither. So a category's
curve is one sweep over its records in the reduce, and overall counts are the sum of the categories'.

Per category the optimum is exact, over every distinct score; overall (one threshold for every category)
it is the best of :data:`SCORE_GRID`, the points at which the per-category counts are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from detbatch.metrics.coco import IOU_THRESHOLDS, MAX_DETECTIONS
from detbatch.metrics.columns import MatchRecords
from detbatch.metrics.order import accumulation_order

THRESHOLD_IOUS = (0.5, 0.75)
# Score thresholds at which counts are kept per category: fine enough that the overall optimum is within
# 0.001 of a score; metrics.json's curves take every 10th point (0, 0.01, ..., 1).
SCORE_GRID = np.linspace(0.0, 1.0, 1001)
CURVE_STEP = 10
_BITS = tuple(int(np.flatnonzero(np.isclose(IOU_THRESHOLDS, x))[0]) for x in THRESHOLD_IOUS)  # area "all" is bits 0..9


def prf1(tp: np.ndarray, fp: np.ndarray, num_gt: np.ndarray | int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision ``tp / (tp + fp)`` (0 with no detection), recall ``tp / num_gt`` (0 without ground truth)
    and F1 ``2 tp / (tp + fp + num_gt)``, float64, elementwise."""
    tp, fp = np.asarray(tp, dtype=np.float64), np.asarray(fp, dtype=np.float64)  # the same shape
    n = np.broadcast_to(np.asarray(num_gt, dtype=np.float64), tp.shape)
    kept, total = tp + fp, tp + fp + n
    precision = np.divide(tp, kept, out=np.zeros_like(tp), where=kept > 0)
    recall = np.divide(tp, n, out=np.zeros_like(tp), where=n > 0)
    f1 = np.divide(2 * tp, total, out=np.zeros_like(tp), where=total > 0)
    return precision, recall, f1


@dataclass(frozen=True)
class CategoryThresholds:
    """One category's counts by score threshold, at each of :data:`THRESHOLD_IOUS` (``U``).

    Attributes:
        tp: int64 [U, S], true positives of score >= ``SCORE_GRID[s]``.
        fp: int64 [U, S], false positives of score >= ``SCORE_GRID[s]``.
        num_gt: counted ground truth (not crowd), all areas.
        best: float64 [U, 4], the F1-optimal threshold over every distinct score (the highest of equal
            F1s), its precision, recall and F1; threshold NaN (and zeros) when no threshold gives a true
            positive.
    """

    tp: np.ndarray
    fp: np.ndarray
    num_gt: int
    best: np.ndarray


def category_thresholds(records: MatchRecords, num_gt: int, order: np.ndarray | None = None) -> CategoryThresholds:
    """:class:`CategoryThresholds` of one category's COCO match records (any order); ``order``: their
    accumulation order below maxDets when the caller has it (shared with the COCO reduce)."""
    if order is None:
        order = accumulation_order(records, max_rank=MAX_DETECTIONS[-1])
    score = records.score[order].astype(np.float64)
    u_n, s_n = len(THRESHOLD_IOUS), len(SCORE_GRID)
    tp_grid, fp_grid = np.zeros((u_n, s_n), np.int64), np.zeros((u_n, s_n), np.int64)
    best = np.zeros((u_n, 4))
    best[:, 0] = np.nan
    # Records at or above each grid point: score is descending.
    above = np.searchsorted(-score, -SCORE_GRID, side="right")
    # The last position of each run of equal scores: a threshold keeps a run whole.
    run_end = np.flatnonzero(np.append(score[1:] != score[:-1], True)) if len(score) else np.zeros(0, np.int64)
    for u, bit in enumerate(_BITS):
        b = np.uint64(1 << bit)
        is_tp = (records.tp[order] & b) != 0
        live = (records.ignored[order] & b) == 0
        cum_tp = np.concatenate(([0], np.cumsum(is_tp)))
        cum_fp = np.concatenate(([0], np.cumsum(live & ~is_tp)))
        tp_grid[u], fp_grid[u] = cum_tp[above], cum_fp[above]
        if len(run_end) and num_gt > 0:
            i, f1 = _best_f1(cum_tp, cum_fp, run_end, num_gt)
            if f1 > 0:
                p, r, _ = prf1(cum_tp[run_end[i] + 1], cum_fp[run_end[i] + 1], num_gt)
                best[u] = (score[run_end[i]], p, r, f1)
    return CategoryThresholds(tp_grid, fp_grid, int(num_gt), best)


# Distinct scores whose F1 is computed at once: a category's records may all have distinct scores (millions),
# and prf1's float64 temporaries of them all would double the reduce's memory.
F1_CHUNK = 1 << 18


def _best_f1(cum_tp: np.ndarray, cum_fp: np.ndarray, run_end: np.ndarray, num_gt: int) -> tuple[int, float]:
    """The first place in ``run_end`` (the highest score) of the largest F1, and that F1 (as :func:`prf1`
    computes it), in pieces of :data:`F1_CHUNK`."""
    best_i, best_f1 = 0, -1.0
    for lo in range(0, len(run_end), F1_CHUNK):
        at = run_end[lo : lo + F1_CHUNK] + 1
        f1 = prf1(cum_tp[at], cum_fp[at], num_gt)[2]
        i = int(np.argmax(f1))
        if f1[i] > best_f1:
            best_i, best_f1 = lo + i, float(f1[i])
    return best_i, best_f1


def _curve(tp: np.ndarray, fp: np.ndarray, num_gt: int) -> dict[str, list[float]]:
    p, r, f1 = prf1(tp[::CURVE_STEP], fp[::CURVE_STEP], num_gt)
    return {"precision": np.round(p, 6).tolist(), "recall": np.round(r, 6).tolist(), "f1": np.round(f1, 6).tolist()}


def _best_dict(best: np.ndarray) -> dict[str, float | None]:
    threshold, p, r, f1 = (float(v) for v in best)
    return {"threshold": None if np.isnan(threshold) else threshold, "precision": p, "recall": r, "f1": f1}


def overall_best(per_category: list[CategoryThresholds]) -> np.ndarray:
    """float64 [U, 4]: one threshold for every category, the best of :data:`SCORE_GRID` by summed counts
    (the highest of equal F1s); NaN threshold when none gives a true positive."""
    tp = sum(c.tp for c in per_category)
    fp = sum(c.fp for c in per_category)
    num_gt = sum(c.num_gt for c in per_category)
    best = np.zeros((len(THRESHOLD_IOUS), 4))
    best[:, 0] = np.nan
    if not per_category:
        return best
    p, r, f1 = prf1(tp, fp, num_gt)
    for u in range(len(THRESHOLD_IOUS)):
        i = len(SCORE_GRID) - 1 - int(np.argmax(f1[u][::-1]))  # the highest threshold of equal F1s
        if f1[u, i] > 0:
            best[u] = (SCORE_GRID[i], p[u, i], r[u, i], f1[u, i])
    return best


def thresholds_dict(category_ids: np.ndarray, per_category: list[CategoryThresholds]) -> dict[str, Any]:
    """metrics.json ``thresholds``: ``scores`` (the curves' x), ``overall`` and ``per_category`` (by id),
    each with, per IoU (``"0.50"``, ``"0.75"``), ``best`` and ``precision``/``recall``/``f1`` curves."""
    overall = overall_best(per_category)
    tp = sum(c.tp for c in per_category) if per_category else np.zeros((len(THRESHOLD_IOUS), len(SCORE_GRID)), np.int64)
    fp = sum(c.fp for c in per_category) if per_category else tp
    num_gt = sum(c.num_gt for c in per_category)

    def entry(tp_: np.ndarray, fp_: np.ndarray, n: int, best: np.ndarray) -> dict[str, Any]:
        return {f"{iou:.2f}": {"best": _best_dict(best[u]), **_curve(tp_[u], fp_[u], n)} for u, iou in enumerate(THRESHOLD_IOUS)}

    return {
        "scores": np.round(SCORE_GRID[::CURVE_STEP], 6).tolist(),
        "overall": entry(tp, fp, num_gt, overall),
        "per_category": {str(int(k)): entry(c.tp, c.fp, c.num_gt, c.best) for k, c in zip(category_ids, per_category)},
    }


def score_thresholds(category_ids: np.ndarray, per_category: list[CategoryThresholds], iou: float = 0.5) -> tuple[dict[int, float], float | None]:
    """The F1-optimal thresholds at ``iou``: per category id (those with one), and the overall one (None
    when no threshold gives a true positive): what thresholds.json holds."""
    u = THRESHOLD_IOUS.index(iou)
    per = {int(k): float(c.best[u, 0]) for k, c in zip(category_ids, per_category) if not np.isnan(c.best[u, 0])}
    default = overall_best(per_category)[u, 0]
    return per, (None if np.isnan(default) else float(default))


def accumulate_with_thresholds(records: MatchRecords, num_gt: np.ndarray, order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, CategoryThresholds]:
    """:func:`~detbatch.metrics.coco_reduce.accumulate_category` and :func:`category_thresholds` of one
    category's records, in the same reduce and from one sort (``order``: the accumulation order, when
    the caller has it)."""
    from detbatch.metrics.coco_reduce import accumulate_category

    if order is None:
        order = accumulation_order(records, max_rank=MAX_DETECTIONS[-1])
    return (*accumulate_category(records, num_gt, order), category_thresholds(records, int(num_gt[0]), order))


def combine_with_thresholds(category_ids: np.ndarray, gt_counts: np.ndarray, parts: dict[int, tuple[Any, ...]]) -> Any:
    """:func:`~detbatch.metrics.coco_reduce.combine` of :func:`accumulate_with_thresholds` parts: the
    :class:`~detbatch.metrics.coco_reduce.CocoResult` with ``thresholds`` set."""
    from dataclasses import replace

    from detbatch.metrics.coco_reduce import combine

    result = combine(category_ids, gt_counts, {c: (p, r, n) for c, (p, r, _, n) in parts.items()})
    per = [
        parts[int(c)][2] if int(c) in parts else category_thresholds(MatchRecords.empty(), int(gt_counts[k, 0]))
        for k, c in enumerate(category_ids)
    ]
    return replace(result, thresholds=per)


def confusion_score_thresholds(category_ids: np.ndarray, per_category: list[CategoryThresholds], given: float | None) -> np.ndarray:
    """float64 [K], the score threshold of each category for the confusion matrix: ``given`` for all, or
    (None) each category's F1-optimal one at IoU 0.5, the overall one for a category without, and
    +inf (no detection) when there is neither."""
    if given is not None:
        return np.full(len(category_ids), float(given))
    per, default = score_thresholds(category_ids, per_category, 0.5)
    fallback = np.inf if default is None else default
    return np.array([per.get(int(k), fallback) for k in category_ids], dtype=np.float64)
