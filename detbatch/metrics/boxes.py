"""Box IoU as pycocotools computes it, bit for bit.

pycocotools' ``bbIou`` (``maskApi.c``) takes boxes as ``[x, y, w, h]`` float64 and rebuilds the far
corner as ``x + w``; it uses ``w * h`` (never the annotation's ``area``) for the union, and for a crowd
ground truth divides by the detection's area alone. The functions here do the same float64 operations in
the same order, so that an IoU that lands exactly on a threshold lands there for both.
"""

from __future__ import annotations

import numpy as np


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """``float64 [N, 4] xywh`` from ``[N, 4] xyxy`` (any float dtype).

    The cast to float64 comes first, then ``w = x_max - x_min``: what a COCO results file written
    from float32 corners holds.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def paired_iou(dt: np.ndarray, gt: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
    """IoU of ``dt[i]`` with ``gt[i]`` for every row ``i``.

    Args:
        dt: float64 [E, 4] xywh, pixels.
        gt: float64 [E, 4] xywh, pixels.
        gt_crowd: bool [E]; a crowd ground truth gives intersection / detection area.

    Returns:
        float64 [E], 0 where the boxes do not overlap.
    """
    dx, dy, dw, dh = dt[:, 0], dt[:, 1], dt[:, 2], dt[:, 3]
    gx, gy, gw, gh = gt[:, 0], gt[:, 1], gt[:, 2], gt[:, 3]
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    overlap = (w > 0) & (h > 0)
    inter = w * h
    det_area = dw * dh
    union = np.where(gt_crowd, det_area, det_area + gw * gh - inter)
    iou = np.zeros(len(dt), dtype=np.float64)
    np.divide(inter, union, out=iou, where=overlap)
    return iou


def pairwise_iou(dt: np.ndarray, gt: np.ndarray, gt_crowd: np.ndarray | None = None) -> np.ndarray:
    """float64 [D, G] IoU of every detection with every ground truth (both float64 [*, 4] xywh)."""
    d, g = len(dt), len(gt)
    crowd = np.zeros(g, dtype=bool) if gt_crowd is None else np.asarray(gt_crowd, dtype=bool)
    di, gi = np.repeat(np.arange(d), g), np.tile(np.arange(g), d)
    return paired_iou(dt[di], gt[gi], crowd[gi]).reshape(d, g)


def overlapping_pairs(dt: np.ndarray, gt: np.ndarray, det: np.ndarray, gts: np.ndarray, min_iou: float,
                      gt_crowd: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The pairs ``(det[k], gts[k])`` whose IoU reaches ``min_iou`` (> 0), and their IoUs.

    The same float64 operations as :func:`paired_iou`, so the same bits, but cheaper where most pairs do not
    overlap (every detection of an image against all its ground truth): the far corners and areas are
    computed once per box, and a pair is dropped as soon as its boxes are apart along x, then along y.

    Args:
        dt, gt: float64 [D, 4] and [G, 4] xywh, pixels.
        det, gts: int [E], the pairs, as rows of ``dt`` and ``gt``.
        min_iou: the IoU a pair must reach (> 0).
        gt_crowd: bool [G] or None; a crowd ground truth gives intersection / detection area.

    Returns:
        (int64 [K] places in ``det``/``gts`` of the pairs kept, in order; float64 [K] their IoUs).
    """
    if not min_iou > 0:
        raise ValueError(f"min_iou must be > 0, got {min_iou}: pairs that do not overlap (IoU 0) are never kept")
    dx, dy, dw, dh = dt[:, 0], dt[:, 1], dt[:, 2], dt[:, 3]
    gx, gy, gw, gh = gt[:, 0], gt[:, 1], gt[:, 2], gt[:, 3]
    at = np.arange(len(det))
    w = np.minimum((dw + dx)[det], (gw + gx)[gts]) - np.maximum(dx[det], gx[gts])
    at, w = at[w > 0], w[w > 0]
    d, g = det[at], gts[at]
    h = np.minimum((dh + dy)[d], (gh + gy)[g]) - np.maximum(dy[d], gy[g])
    apart = h > 0
    at, w, h, d, g = at[apart], w[apart], h[apart], d[apart], g[apart]
    inter = w * h
    det_area = (dw * dh)[d]
    union = det_area + (gw * gh)[g] - inter
    if gt_crowd is not None:
        union = np.where(gt_crowd[g], det_area, union)
    iou = inter / union
    reach = iou >= min_iou
    return at[reach], iou[reach]
