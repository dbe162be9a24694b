"""The total orders of evaluation, computed fast.

``np.lexsort`` over six float and int keys is the obvious way and, on a 600k-detection batch, 25 times
slower than one stable ``argsort`` of a packed ``uint64`` key. These functions pack keys where the values
fit and fall back to ``np.lexsort`` where they do not; both give the same permutation.
"""

from __future__ import annotations

import numpy as np

from detbatch.metrics.columns import MatchRecords


def descending_key(score: np.ndarray) -> np.ndarray:
    """An integer key whose ascending order is descending ``score`` (float32 -> uint32), with
    ``-0.0 == 0.0``; float64 scores return ``-score`` (float64 has no room to pack)."""
    if score.dtype != np.float32:
        return -np.asarray(score, dtype=np.float64)
    bits = (score + np.float32(0.0)).view(np.uint32)  # + 0.0 turns -0.0 into 0.0
    ascending = np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))
    return ~ascending


def detection_order(pair_key: np.ndarray, score: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Indices sorting detections by (``pair_key``, score descending, x_min, y_min, x_max, y_max).

    Args:
        pair_key: int64 [N] >= 0, (image, category) as one integer, in (image_id, category_id) order.
        score: float [N] (no NaN).
        boxes: float [N, 4] xyxy.
    """
    n = len(score)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    desc = descending_key(score)
    if desc.dtype == np.uint32 and int(pair_key.max()) < 2**32:
        packed = (pair_key.astype(np.uint64) << np.uint64(32)) | desc.astype(np.uint64)
        order = np.argsort(packed, kind="stable")
        tied = packed[order][1:] == packed[order][:-1]
    else:
        order = np.lexsort((desc, pair_key))
        tied = (pair_key[order][1:] == pair_key[order][:-1]) & (desc[order][1:] == desc[order][:-1])
    if tied.any():
        # Equal (pair, score) runs: order each run's members by box, in place.
        start = np.concatenate(([True], ~tied))
        run = np.cumsum(start) - 1
        member = np.concatenate(([False], tied)) | np.concatenate((tied, [False]))
        at = np.flatnonzero(member)
        rows = order[at]
        b = boxes[rows]
        order[at] = rows[np.lexsort((b[:, 3], b[:, 2], b[:, 1], b[:, 0], run[at]))]
    return order


def record_order(score: np.ndarray, image_id: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Indices sorting match records by (score descending, image_id, rank): pycocotools' accumulate order."""
    n = len(score)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rank_bits = max(int(rank.max()).bit_length(), 1)
    if int(rank.min()) >= 0 and int(image_id.min()) >= 0 and int(image_id.max()) < 2 ** (63 - rank_bits):
        within = (image_id.astype(np.int64) << rank_bits) | rank.astype(np.int64)
        order = np.argsort(within, kind="stable")
    else:
        order = np.lexsort((rank, image_id))
    return order[np.argsort(descending_key(score)[order], kind="stable")]


def accumulation_order(records: MatchRecords, max_rank: int | None = None) -> np.ndarray:
    """Indices of ``records`` in :func:`record_order`, the order both reduces sweep a category in;
    records of ``rank >= max_rank`` left out (COCO: beyond the largest maxDets)."""
    if max_rank is None:
        return record_order(records.score, records.image_id, records.rank)
    # Dropping the rows first keeps the sort key small.
    kept = np.flatnonzero(records.rank < max_rank)
    return kept[record_order(records.score[kept], records.image_id[kept], records.rank[kept])]
