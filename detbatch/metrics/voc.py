"""Pascal VOC average precision per class, the classic definition, as a map over images and a reduce.

The definition is that of the VOC devkit's ``VOCevaldet`` (and its Python port ``voc_eval``):

- detections of a class are taken by descending score; each is compared with the class's ground truth of
  its image and assigned the ground truth of highest IoU (the first of equal ones);
- IoU > 0.5 (strict) with a *difficult* ground truth: ignored, neither true nor false positive;
  with another ground truth not yet taken: true positive, the ground truth is taken; already taken, or
  IoU <= 0.5: false positive;
- recall = tp / (non-difficult ground truth), precision = tp / max(tp + fp, float64 eps);
- all-point AP (VOC2010+): area under the monotone precision envelope; 11-point AP (VOC2007): mean of
  the best precision at recall >= 0, 0.1, ..., 1.

Choices (docs/evaluate.md): boxes are continuous pixel coordinates, so areas are ``w * h``; the devkit's
``+1`` (integer pixel indices) is available as ``plus_one=True``. A ground truth is difficult when its
annotation has a true ``difficult`` or ``iscrowd``. A class without non-difficult ground truth has AP -1 and
is left out of the mean. Score ties follow the same order as COCO (image id, then x_min, y_min, x_max,
y_max); the matching of one image depends only on its own detections in that order, so images are matched
independently and records reduced per class, exactly as the sequential definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from detbatch.metrics.coco import RECALL_THRESHOLDS
from detbatch.metrics.columns import Detections, GroundTruth, MatchRecords, evaluated_detections
from detbatch.metrics.grouping import (
    accumulate_by_category,
    count_per_category,
    every_category,
    mean_valid,
    pair_detections,
)
from detbatch.metrics.order import accumulation_order

VOC_IOU_THRESHOLD = 0.5  # strict: a match needs IoU > 0.5
_ELEVEN_POINTS = np.arange(0.0, 1.1, 0.1)  # the devkit's own points, 0.30000000000000004 included


def voc_iou(dt: np.ndarray, gt: np.ndarray, plus_one: bool = False) -> np.ndarray:
    """IoU of ``dt[i]`` with ``gt[i]`` (both float64 [E, 4] xyxy) as the VOC devkit computes it."""
    one = 1.0 if plus_one else 0.0
    iw = np.maximum(np.minimum(dt[:, 2], gt[:, 2]) - np.maximum(dt[:, 0], gt[:, 0]) + one, 0.0)
    ih = np.maximum(np.minimum(dt[:, 3], gt[:, 3]) - np.maximum(dt[:, 1], gt[:, 1]) + one, 0.0)
    inter = iw * ih
    union = (dt[:, 2] - dt[:, 0] + one) * (dt[:, 3] - dt[:, 1] + one) + (gt[:, 2] - gt[:, 0] + one) * (
        gt[:, 3] - gt[:, 1] + one
    ) - inter
    iou = np.zeros(len(dt))
    np.divide(inter, union, out=iou, where=union > 0)
    return iou


def match_images_voc(gt: GroundTruth, dt: Detections, plus_one: bool = False) -> MatchRecords:
    """Per-image VOC matching; records as :class:`MatchRecords` with bit 0 of ``tp`` / ``ignored``.

    A ground truth is difficult where ``gt.difficult`` or ``gt.iscrowd``. ``rank`` is the position in the
    tie order within the image and class (VOC has no per-image cap).
    """
    dt, _ = evaluated_detections(gt, dt)
    n = len(dt)
    if n == 0:
        return MatchRecords.empty()
    pairs = pair_detections(gt, dt)
    edges = pairs.edges()
    edge_det, edge_gt = edges.det, edges.gt
    gt_xyxy = gt.boxes.copy()
    gt_xyxy[:, 2:] += gt_xyxy[:, :2]
    dt_xyxy = np.asarray(pairs.dt.boxes, dtype=np.float64)
    iou = voc_iou(dt_xyxy[edge_det], gt_xyxy[edge_gt], plus_one)

    # Best ground truth per detection: the highest IoU, the first of equal ones (np.argmax).
    best = np.full(n, -1, dtype=np.int64)
    best_iou = np.full(n, -np.inf)
    if len(iou):
        edge_order = np.lexsort((np.arange(len(iou)), -iou, edge_det))
        first = np.ones(len(iou), dtype=bool)
        first[1:] = edge_det[edge_order][1:] != edge_det[edge_order][:-1]
        top = edge_order[first]
        best[edge_det[top]] = edge_gt[top]
        best_iou[edge_det[top]] = iou[top]
    hit = best_iou > VOC_IOU_THRESHOLD
    difficult = np.zeros(n, dtype=bool)
    difficult[hit] = (gt.difficult | gt.iscrowd)[best[hit]]
    # The first detection (in order) on a non-difficult ground truth takes it; later ones are false.
    claims = np.flatnonzero(hit & ~difficult)
    _, first_claim = np.unique(best[claims], return_index=True)
    tp = np.zeros(n, dtype=bool)
    tp[claims[first_claim]] = True
    ignored = hit & difficult
    return pairs.records(tp=tp.astype(np.uint64), ignored=ignored.astype(np.uint64))


def count_ground_truth_voc(gt: GroundTruth) -> np.ndarray:
    """int64 [K, 1]: non-difficult (and not crowd) ground truth per category (``gt.category_ids``)."""
    return count_per_category(gt, ~(gt.difficult | gt.iscrowd)[:, None])


def average_precision(tp: np.ndarray, fp: np.ndarray, num_gt: int) -> tuple[float, float, np.ndarray]:
    """All-point AP, 11-point AP, and the precision envelope at ``RECALL_THRESHOLDS`` (for plots).

    Args:
        tp, fp: bool [N] in descending score order (an ignored detection has neither).
        num_gt: non-difficult ground truth, > 0.
    """
    tp_sum = np.cumsum(tp).astype(np.float64)
    fp_sum = np.cumsum(fp).astype(np.float64)
    rec = tp_sum / num_gt
    prec = tp_sum / np.maximum(tp_sum + fp_sum, np.finfo(np.float64).eps)
    ap11 = 0.0
    for t in _ELEVEN_POINTS:
        above = rec >= t
        ap11 += (float(np.max(prec[above])) if above.any() else 0.0) / 11.0
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    ap = float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))
    at = np.searchsorted(rec, RECALL_THRESHOLDS, side="left")
    curve = np.zeros(len(RECALL_THRESHOLDS))
    reached = at < len(rec)
    curve[reached] = mpre[1:-1][at[reached]]
    return ap, ap11, curve


def accumulate_category_voc(records: MatchRecords, num_gt: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(AP, 11-point AP, precision at ``RECALL_THRESHOLDS``) of one class; -1, -1, -1s without ground
    truth. ``num_gt``: int [1] from :func:`count_ground_truth_voc`."""
    npos = int(num_gt[0])
    if npos == 0:
        return -1.0, -1.0, -np.ones(len(RECALL_THRESHOLDS))
    order = accumulation_order(records)
    tp = records.tp[order].astype(bool)
    fp = ~tp & ~records.ignored[order].astype(bool)
    return average_precision(tp, fp, npos)


@dataclass(frozen=True)
class VocResult:
    """Pascal VOC results per category (``category_ids`` order); AP -1 without non-difficult ground truth.

    Attributes:
        category_ids: int64 [K].
        ap: float64 [K], all-point AP.  ap11: float64 [K], 11-point AP.
        precision: float64 [R, K], precision envelope at ``RECALL_THRESHOLDS``.
        num_gt: int64 [K] non-difficult ground truth.  num_detections: int64 [K].
    """

    category_ids: np.ndarray
    ap: np.ndarray
    ap11: np.ndarray
    precision: np.ndarray
    num_gt: np.ndarray
    num_detections: np.ndarray

    @property
    def mean_ap(self) -> float:
        return mean_valid(self.ap)

    @property
    def mean_ap11(self) -> float:
        return mean_valid(self.ap11)

    def per_category(self) -> list[dict[str, Any]]:
        return [
            {
                "category_id": int(c), "AP": float(self.ap[k]), "AP_11point": float(self.ap11[k]),
                "num_gt": int(self.num_gt[k]), "num_detections": int(self.num_detections[k]),
            }  # fmt: skip
            for k, c in enumerate(self.category_ids)
        ]


def combine_voc(
    category_ids: np.ndarray, gt_counts: np.ndarray, parts: dict[int, tuple[Any, ...]]
) -> VocResult:
    """Assemble per-category reductions into a :class:`VocResult`.

    Args:
        category_ids: int64 [K], the evaluated categories.
        gt_counts: int64 [K, 1], :func:`count_ground_truth_voc`.
        parts: category id -> (AP, 11-point AP, precision [R], number of detections), from
            :func:`accumulate_category_voc`; a category absent here had no detections.
    """
    k_n = len(category_ids)
    ap, ap11 = np.empty(k_n), np.empty(k_n)
    precision = np.empty((len(RECALL_THRESHOLDS), k_n))
    num_detections = np.zeros(k_n, dtype=np.int64)
    rows = every_category(category_ids, gt_counts, parts, accumulate_category_voc)
    for k, (ap_k, ap11_k, curve, nd) in enumerate(rows):
        ap[k], ap11[k], precision[:, k], num_detections[k] = ap_k, ap11_k, curve, nd
    return VocResult(
        np.asarray(category_ids, dtype=np.int64), ap, ap11, precision, gt_counts[:, 0].copy(), num_detections
    )


def reduce_voc(records: MatchRecords, category_ids: np.ndarray, gt_counts: np.ndarray) -> VocResult:
    """Reduce the VOC records of every image in this process (:func:`match_images_voc`, any order;
    ``gt_counts`` from :func:`count_ground_truth_voc` of the whole ground truth)."""
    parts = accumulate_by_category(records, category_ids, gt_counts, accumulate_category_voc)
    return combine_voc(category_ids, gt_counts, parts)


def evaluate_voc(gt: GroundTruth, dt: Detections, plus_one: bool = False) -> VocResult:
    """Pascal VOC AP per class of ``dt`` against ``gt``, in this process."""
    return reduce_voc(match_images_voc(gt, dt, plus_one), gt.category_ids, count_ground_truth_voc(gt))


__all__ = [
    "VOC_IOU_THRESHOLD",
    "VocResult",
    "accumulate_category_voc",
    "average_precision",
    "combine_voc",
    "count_ground_truth_voc",
    "evaluate_voc",
    "match_images_voc",
    "reduce_voc",
    "voc_iou",
]
