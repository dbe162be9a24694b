"""The reduce of COCO evaluation: pycocotools' ``accumulate`` and ``summarize`` over match records.

A category's precision and recall depend only on its own records and ground-truth counts, so each category
is reduced on its own (by one process, in any order) and :func:`combine` stacks the results.

Exactness: ``accumulate`` concatenates the per-image lists in image-id order and sorts by ``-score`` with a
stable mergesort, so ties fall to (image id, rank within the image): :func:`accumulate_category` sorts
by exactly that total order, which does not depend on how the records were partitioned. It then computes
the same float64 expressions: for the ``j``-th true positive at position ``i``, ``rc = j / npig`` and
``pr = j / (n_i + eps)`` with ``n_i`` the non-ignored detections up to ``i`` (pycocotools' ``fp + tp``,
an exact integer). Only true-positive positions are kept: precision drops or stays flat at every other
position, so the envelope at a true positive and the first position reaching each recall threshold are
the same as over the full list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from detbatch.metrics.coco import (
    AREA_LABELS,
    IOU_THRESHOLDS,
    MAX_DETECTIONS,
    NUM_AREAS,
    NUM_THRESHOLDS,
    RECALL_THRESHOLDS,
    count_ground_truth,
    match_images,
)
from detbatch.metrics.columns import Detections, GroundTruth, MatchRecords
from detbatch.metrics.grouping import accumulate_by_category, every_category, mean_valid
from detbatch.metrics.order import accumulation_order


class StatSpec(NamedTuple):
    """What one of the 12 ``COCOeval.stats`` averages.

    Attributes:
        average_precision: precision (AP) if true, else recall (AR).
        iou: the one IoU threshold, or None for the mean over ``IOU_THRESHOLDS``.
        area: the area range, one of ``AREA_LABELS``.
        max_detections: maxDets, one of ``MAX_DETECTIONS``.
    """

    average_precision: bool
    iou: float | None
    area: str
    max_detections: int


STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# pycocotools' _summarizeDets, in its order (that of STAT_KEYS): summarize() and the summary lines of
# the report both read it.
STAT_SPECS = (
    StatSpec(True, None, "all", 100), StatSpec(True, 0.5, "all", 100), StatSpec(True, 0.75, "all", 100),
    StatSpec(True, None, "small", 100), StatSpec(True, None, "medium", 100), StatSpec(True, None, "large", 100),
    StatSpec(False, None, "all", 1), StatSpec(False, None, "all", 10), StatSpec(False, None, "all", 100),
    StatSpec(False, None, "small", 100), StatSpec(False, None, "medium", 100), StatSpec(False, None, "large", 100),
)  # fmt: skip
_EPS = np.spacing(1)  # pycocotools' tp / (fp + tp + np.spacing(1))


def accumulate_category(records: MatchRecords, num_gt: np.ndarray, order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of one category, as ``COCOeval.accumulate``.

    Args:
        records: the category's match records, any order.
        num_gt: int [A], the category's counted ground truth per area range (:func:`count_ground_truth`).
        order: their :func:`~detbatch.metrics.order.accumulation_order` below maxDets, when the caller
            has it (the diagnostics sort once for every sweep of the category); else computed here.

    Returns:
        precision float64 [T, R, A, M] and recall float64 [T, A, M]; -1 where ``num_gt`` is 0.
    """
    t_n, r_n, a_n, m_n = NUM_THRESHOLDS, len(RECALL_THRESHOLDS), NUM_AREAS, len(MAX_DETECTIONS)
    precision = -np.ones((t_n, r_n, a_n, m_n))
    recall = -np.ones((t_n, a_n, m_n))
    if order is None:
        order = accumulation_order(records, max_rank=MAX_DETECTIONS[-1])  # only ranks below maxDets count
    rank = records.rank[order]
    all_thresholds = np.uint16((1 << t_n) - 1)
    for m, max_det in enumerate(MAX_DETECTIONS):
        sel = order[rank < max_det]
        tp_bits, ignored_bits = records.tp[sel], records.ignored[sel]
        for a in range(a_n):
            npig = int(num_gt[a])
            if npig == 0:
                continue
            # This area range's T bits as uint16 words. Records ignored at every threshold add to no
            # count, so the sweep runs over the others only ("live"); positions below are in that space.
            shift = np.uint64(a * t_n)
            ignored_word = ((ignored_bits >> shift) & np.uint64(all_thresholds)).astype(np.uint16)
            live = np.flatnonzero(ignored_word != all_thresholds)
            ignored_word = ignored_word[live]
            tp_word = ((tp_bits[live] >> shift) & np.uint64(all_thresholds)).astype(np.uint16)
            tp_any = np.flatnonzero(tp_word)
            partly_ignored = np.flatnonzero(ignored_word)
            for t in range(t_n):
                bit_t = np.uint16(1 << t)
                tp_at = tp_any[(tp_word[tp_any] & bit_t) != 0]
                recall[t, a, m] = len(tp_at) / npig
                precision[t, :, a, m] = 0.0
                if len(tp_at) == 0:
                    continue
                ignored_at = partly_ignored[(ignored_word[partly_ignored] & bit_t) != 0]
                # non-ignored records up to each true positive: pycocotools' fp + tp there
                counted = tp_at + 1 - np.searchsorted(ignored_at, tp_at, side="right")
                j = np.arange(1, len(tp_at) + 1, dtype=np.float64)
                pr = j / (counted.astype(np.float64) + _EPS)
                rc = j / npig
                envelope = np.maximum.accumulate(pr[::-1])[::-1]
                at = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
                reached = at < len(rc)
                precision[t, reached, a, m] = envelope[at[reached]]
    return precision, recall


@dataclass(frozen=True)
class CocoResult:
    """COCO evaluation results.

    Attributes:
        precision: float64 [T, R, K, A, M] (pycocotools' ``eval['precision']``), -1 without ground truth.
        recall: float64 [T, K, A, M] (``eval['recall']``).
        stats: float64 [12], ``COCOeval.stats`` (keys :data:`STAT_KEYS`).
        category_ids: int64 [K].
        num_gt: int64 [K], counted ground truth (not crowd), all areas.
        num_detections: int64 [K], evaluated detections (all ranks).
        thresholds: per category, its :class:`~detbatch.metrics.thresholds.CategoryThresholds`, when the
            diagnostics were computed (else None).
        confusion: int64 [K + 1, K + 1], :func:`~detbatch.metrics.confusion.confusion_matrix` summed
            over every image, when computed (else None).
        slices: slice name -> ``AP``, ``AP50``, ``AR100``, ``images``
            (:func:`~detbatch.metrics.slices.slice_stats`), when slices were asked for (else None).
        errors: the TIDE :class:`~detbatch.metrics.tide.ErrorBreakdown`, when computed (else None).
    """

    precision: np.ndarray
    recall: np.ndarray
    stats: np.ndarray
    category_ids: np.ndarray
    num_gt: np.ndarray
    num_detections: np.ndarray
    thresholds: list[Any] | None = None
    confusion: np.ndarray | None = None
    slices: dict[str, dict[str, Any]] | None = None
    errors: Any | None = None

    def stats_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in zip(STAT_KEYS, self.stats)}

    def per_category(self) -> list[dict[str, Any]]:
        """Per category: ``category_id``, ``AP``, ``AP50``, ``AP75``, ``AR100`` (-1 without ground truth),
        ``num_gt``, ``num_detections``."""
        all_area, m100 = AREA_LABELS.index("all"), MAX_DETECTIONS.index(100)
        t50, t75 = (int(np.flatnonzero(IOU_THRESHOLDS == x)[0]) for x in (0.5, 0.75))
        out = []
        for k, cat in enumerate(self.category_ids):
            p = self.precision[:, :, k, all_area, m100]
            out.append({
                "category_id": int(cat),
                "AP": mean_valid(p),
                "AP50": mean_valid(p[t50]),
                "AP75": mean_valid(p[t75]),
                "AR100": mean_valid(self.recall[:, k, all_area, m100]),
                "num_gt": int(self.num_gt[k]),
                "num_detections": int(self.num_detections[k]),
            })  # fmt: skip
        return out


def summarize(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """The 12 ``COCOeval.stats`` from precision [T, R, K, A, M] and recall [T, K, A, M], indexed the same
    way pycocotools indexes them so that the means add up in the same order."""
    stats = np.zeros(len(STAT_SPECS))
    for i, (ap, iou, area, max_det) in enumerate(STAT_SPECS):
        aind = [AREA_LABELS.index(area)]
        mind = [MAX_DETECTIONS.index(max_det)]
        s = precision if ap else recall
        if iou is not None:
            s = s[np.where(iou == IOU_THRESHOLDS)[0]]
        s = s[:, :, :, aind, mind] if ap else s[:, :, aind, mind]
        stats[i] = mean_valid(s)
    return stats


def combine(
    category_ids: np.ndarray,
    gt_counts: np.ndarray,
    parts: dict[int, tuple[np.ndarray, np.ndarray, int]],
) -> CocoResult:
    """Assemble per-category reductions into a :class:`CocoResult`.

    Args:
        category_ids: int64 [K], the evaluated categories.
        gt_counts: int64 [K, A], :func:`count_ground_truth`.
        parts: category id -> (precision [T, R, A, M], recall [T, A, M], number of detections), from
            :func:`accumulate_category`; a category absent here had no detections.
    """
    t_n, r_n, a_n, m_n = NUM_THRESHOLDS, len(RECALL_THRESHOLDS), NUM_AREAS, len(MAX_DETECTIONS)
    k_n = len(category_ids)
    precision = -np.ones((t_n, r_n, k_n, a_n, m_n))
    recall = -np.ones((t_n, k_n, a_n, m_n))
    num_detections = np.zeros(k_n, dtype=np.int64)
    rows = every_category(category_ids, gt_counts, parts, accumulate_category)
    for k, (p, r, nd) in enumerate(rows):
        precision[:, :, k], recall[:, k], num_detections[k] = p, r, nd
    return CocoResult(
        precision=precision,
        recall=recall,
        stats=summarize(precision, recall),
        category_ids=np.asarray(category_ids, dtype=np.int64),
        num_gt=gt_counts[:, AREA_LABELS.index("all")].astype(np.int64),
        num_detections=num_detections,
    )


def reduce(records: MatchRecords, category_ids: np.ndarray, gt_counts: np.ndarray) -> CocoResult:
    """Reduce the records of a whole evaluation (every image) in this process.

    Args:
        records: from :func:`match_images`, concatenated over all images (any order).
        category_ids: int64 [K], the evaluated categories (``GroundTruth.category_ids``).
        gt_counts: int64 [K, A], :func:`count_ground_truth` of the whole ground truth.
    """
    parts = accumulate_by_category(records, category_ids, gt_counts, accumulate_category)
    return combine(category_ids, gt_counts, parts)


def evaluate_coco(gt: GroundTruth, dt: Detections) -> CocoResult:
    """COCO bbox evaluation of ``dt`` against ``gt``, in this process: equal to pycocotools'
    ``COCOeval(gt, dt, "bbox")`` after ``evaluate(); accumulate(); summarize()``.

    For a training loop: call :func:`match_images` per batch of whole images, keep the records, and
    :func:`reduce` them at the end with :func:`count_ground_truth` of the ground truth seen.
    """
    return reduce(match_images(gt, dt), gt.category_ids, count_ground_truth(gt))
