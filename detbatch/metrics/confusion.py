"""The confusion matrix with a background class, as a map over images (matrices add up) — docs/evaluate.md,
"Confusion matrix".

Per image, the detections of score >= their category's threshold, in the tie order (score descending,
then box), are matched greedily in three passes, each as COCOeval matches (best IoU >= ``iou`` among the
ground truth not taken, the last of equal IoUs):

1. same category: regular ground truth first, else a crowd of the category (never used up): the
   detection is then ignored, as COCO ignores it. A match is a diagonal cell;
2. the detections still unmatched, against the regular ground truth of any other category not taken in
   pass 1 or earlier in pass 2: an off-diagonal cell (row: the ground truth's category);
3. still unmatched: ignored if it reaches ``iou`` with a crowd of any category (crowd IoU: the
   intersection over the detection's area), else background (row ``K``).

Regular ground truth left untaken is missed (column ``K``). Crowd ground truth never appears in a row.
"""

from __future__ import annotations

import numpy as np

from detbatch.metrics.boxes import overlapping_pairs, xyxy_to_xywh
from detbatch.metrics.columns import Detections, GroundTruth, evaluated_detections
from detbatch.metrics.grouping import ragged_arange
from detbatch.metrics.order import detection_order


def _image_edges(det_image: np.ndarray, gt_image: np.ndarray, gt_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (detection, ground truth) of the same image: det_image int64 [N] (non-decreasing), gt_image
    int64 [H] (sorted) for the rows ``gt_rows`` [H]; edges by detection, then ground-truth order."""
    start = np.searchsorted(gt_image, det_image, side="left")
    count = np.searchsorted(gt_image, det_image, side="right") - start
    det = np.repeat(np.arange(len(det_image)), count)
    return det, gt_rows[np.repeat(start, count) + ragged_arange(count)]


def _greedy(step: np.ndarray, det: np.ndarray, gt: np.ndarray, iou: np.ndarray, crowd: np.ndarray,
            taken: np.ndarray, n: int) -> np.ndarray:  # fmt: skip
    """Greedy matching over the candidate edges (``det``, ``gt``, ``iou``, all reaching the threshold;
    ``crowd``: the ground truth is a crowd, never taken, tried after regular ones). ``step`` [N]: each
    detection's position in its image (no two detections of an image share one). Updates ``taken`` [G];
    returns int64 [N], the matched annotation or -1."""
    match = np.full(n, -1, dtype=np.int64)
    if len(det) == 0:
        return match
    # Per detection, its preferred candidate first: regular before crowd, highest IoU, the last of equal ones.
    order = np.lexsort((-gt, -iou, crowd, det, step[det]))
    det, gt, crowd, e_step = det[order], gt[order], crowd[order], step[det[order]]
    bounds = np.searchsorted(e_step, np.arange(int(e_step.max()) + 2))
    for s in range(len(bounds) - 1):
        lo, hi = bounds[s], bounds[s + 1]
        if lo == hi:
            continue
        d, g, c = det[lo:hi], gt[lo:hi], crowd[lo:hi]
        free = c | ~taken[g]
        d, g, c = d[free], g[free], c[free]
        first = np.ones(len(d), dtype=bool)
        first[1:] = d[1:] != d[:-1]
        d, g, c = d[first], g[first], c[first]
        match[d] = g
        taken[g[~c]] = True
    return match


def confusion_matrix(gt: GroundTruth, dt: Detections, score_threshold: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """int64 [K + 1, K + 1] confusion counts of ``dt`` against ``gt`` for any set of whole images.

    Args:
        score_threshold: float64 [K], per category of ``gt.category_ids``: detections of score >= it count.
        iou: the IoU a match must reach (> 0).

    Returns:
        rows: ground-truth category (``gt.category_ids`` order), row ``K`` background; columns: predicted
        category, column ``K`` background (missed ground truth).
    """
    k_n = len(gt.category_ids)
    out = np.zeros((k_n + 1, k_n + 1), dtype=np.int64)
    dt, _ = evaluated_detections(gt, dt)
    dk = np.searchsorted(gt.category_ids, dt.category_id)
    keep = dt.score >= np.asarray(score_threshold, dtype=np.float64)[dk]
    dt, dk = dt.take(keep), dk[keep]
    image = np.searchsorted(gt.image_ids, dt.image_id)
    order = detection_order(image.astype(np.int64), dt.score, dt.boxes)
    dt, dk, image = dt.take(order), dk[order], image[order]
    n = len(dt)
    step = np.arange(n) - np.searchsorted(image, image, side="left")

    gk = np.searchsorted(gt.category_ids, gt.category_id)
    g_image = np.searchsorted(gt.image_ids, gt.image_id)
    g_order = np.argsort(g_image, kind="stable")
    det, g = _image_edges(image, g_image[g_order], g_order)
    reach, edge_iou = overlapping_pairs(xyxy_to_xywh(dt.boxes), gt.boxes, det, g, iou, gt.iscrowd)
    det, g = det[reach], g[reach]
    crowd = gt.iscrowd[g]
    same = dk[det] == gk[g]

    taken = np.zeros(len(gt), dtype=bool)
    first = _greedy(step, det[same], g[same], edge_iou[same], crowd[same], taken, n)
    rest = (first < 0)[det] & ~same & ~crowd
    second = _greedy(step, det[rest], g[rest], edge_iou[rest], crowd[rest], taken, n)
    matched = first >= 0
    diagonal = matched & ~gt.iscrowd[np.maximum(first, 0)] if len(gt) else matched
    np.add.at(out, (gk[first[diagonal]], dk[diagonal]), 1)
    off = second >= 0
    np.add.at(out, (gk[second[off]], dk[off]), 1)
    over_crowd = np.zeros(n, dtype=bool)
    over_crowd[det[crowd]] = True
    background = ~matched & ~off & ~over_crowd
    np.add.at(out, (k_n, dk[background]), 1)
    missed = ~taken & ~gt.iscrowd
    np.add.at(out, (gk[missed], k_n), 1)
    return out
