"""The grouping that COCO and VOC evaluation share: detections by (image, category) pair for the map,
match records by category for the reduce.

Both match the detections of one image and one category (a *pair*), in the tie order of
:mod:`detbatch.metrics.order`, with that pair's ground truth: :func:`pair_detections` sorts them into
pairs and :meth:`DetectionPairs.edges` lists every (detection, ground truth) to compare. Both reduce one
category at a time from its own records and ground-truth count: :func:`accumulate_by_category` runs a
metric's accumulation over every category of a set of records, and :func:`every_category` completes the
categories without records. What a match and an accumulation are stays with each metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from detbatch.metrics.columns import Detections, GroundTruth, MatchRecords
from detbatch.metrics.order import detection_order

# A metric's reduce of one category: (its records, its ground-truth count [A]) -> its results.
Accumulate = Callable[[MatchRecords, np.ndarray], tuple[Any, ...]]


def ragged_arange(counts: np.ndarray) -> np.ndarray:
    """``concat(arange(c) for c in counts)`` without a Python loop."""
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    return np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)


@dataclass(frozen=True)
class PairEdges:
    """Every (detection, ground truth) of the same pair: detection by detection, and each detection's
    edges in its pair's annotation order (``DetectionPairs.gt_order``).

    Attributes:
        det: int64 [E], the detection (row of ``DetectionPairs.dt``), non-decreasing.
        gt: int64 [E], the annotation (row of the :class:`GroundTruth`).
        start: int64 [N], each detection's first edge; it has ``gt_count`` of its pair edges, or none
            when it was left out.
    """

    det: np.ndarray
    gt: np.ndarray
    start: np.ndarray


@dataclass(frozen=True)
class DetectionPairs:
    """Detections sorted into (image, category) pairs, and the ground truth of each pair.

    The pairs are the (image, category) with at least one detection, numbered ``0 .. P-1`` in
    (image_id, category_id) order.

    Attributes:
        dt: :class:`Detections` [N], sorted by pair, then in the tie order (:func:`detection_order`).
        pair: int64 [N], each detection's pair (non-decreasing).
        rank: int64 [N], each detection's position within its pair.
        gt_order: int64 [G], the annotations (rows of the :class:`GroundTruth`) grouped by pair, in
            annotation order within a pair (as pycocotools).
        gt_start: int64 [P], where each pair's ground truth starts in ``gt_order``.
        gt_count: int64 [P], how much ground truth each pair has (0 for some).
    """

    dt: Detections
    pair: np.ndarray
    rank: np.ndarray
    gt_order: np.ndarray
    gt_start: np.ndarray
    gt_count: np.ndarray

    def edges(self, counted: np.ndarray | None = None) -> PairEdges:
        """Every (detection, ground truth) of the same pair; ``counted``: bool [N], the detections to
        include (default all)."""
        n_gt = self.gt_count[self.pair]
        if counted is not None:
            n_gt = np.where(counted, n_gt, 0)
        det = np.repeat(np.arange(len(n_gt)), n_gt)
        gt = self.gt_order[self.gt_start[self.pair[det]] + ragged_arange(n_gt)]
        return PairEdges(det=det, gt=gt, start=np.cumsum(n_gt) - n_gt)

    def ground_truth_of(self, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ground truth of ``pairs`` (int64 [Q], pair numbers), pair by pair, each in annotation
        order: its place in ``pairs`` (int64 [H]), its slot within its pair (int64 [H]), and its
        annotation (int64 [H], row of the :class:`GroundTruth`)."""
        n_gt = self.gt_count[pairs]
        owner = np.repeat(np.arange(len(pairs)), n_gt)
        slot = ragged_arange(n_gt)
        return owner, slot, self.gt_order[self.gt_start[pairs][owner] + slot]

    def records(self, tp: np.ndarray, ignored: np.ndarray) -> MatchRecords:
        """The :class:`MatchRecords` of the detections, given their ``tp`` and ``ignored`` bits (uint64 [N])."""
        return MatchRecords(
            category_id=self.dt.category_id,
            image_id=self.dt.image_id,
            rank=self.rank.astype(np.int32),
            score=self.dt.score,
            tp=tp,
            ignored=ignored,
        )


def pair_detections(gt: GroundTruth, dt: Detections) -> DetectionPairs:
    """Sort ``dt`` into (image, category) pairs and find each pair's ground truth.

    ``dt`` must hold only images and categories of ``gt`` (:func:`evaluated_detections`).
    """
    n = len(dt)
    k = len(gt.category_ids)
    key = np.searchsorted(gt.image_ids, dt.image_id) * k + np.searchsorted(gt.category_ids, dt.category_id)
    order = detection_order(key, dt.score, dt.boxes)
    key, dt = key[order], dt.take(order)
    new_pair = np.ones(n, dtype=bool)
    new_pair[1:] = key[1:] != key[:-1]
    pair_start = np.flatnonzero(new_pair)
    pair = np.repeat(np.arange(len(pair_start)), np.diff(np.append(pair_start, n)))

    gt_key = np.searchsorted(gt.image_ids, gt.image_id) * k + np.searchsorted(gt.category_ids, gt.category_id)
    gt_order = np.argsort(gt_key, kind="stable")
    gt_key = gt_key[gt_order]
    gt_start = np.searchsorted(gt_key, key[pair_start], side="left")
    gt_count = np.searchsorted(gt_key, key[pair_start], side="right") - gt_start
    return DetectionPairs(
        dt=dt,
        pair=pair,
        rank=np.arange(n) - pair_start[pair],
        gt_order=gt_order,
        gt_start=gt_start,
        gt_count=gt_count,
    )


def count_per_category(gt: GroundTruth, counted: np.ndarray) -> np.ndarray:
    """int64 [K, C]: per category (``gt.category_ids``), the annotations ``counted`` (bool [G, C]) marks."""
    out = np.zeros((len(gt.category_ids), counted.shape[1]), dtype=np.int64)
    np.add.at(out, np.searchsorted(gt.category_ids, gt.category_id), counted.astype(np.int64))
    return out


def accumulate_by_category(
    records: MatchRecords, category_ids: np.ndarray, gt_counts: np.ndarray, accumulate: Accumulate
) -> dict[int, tuple[Any, ...]]:
    """Reduce each category of ``records`` on its own.

    Args:
        records: match records of any categories among ``category_ids``, any order.
        category_ids: int64 [K] sorted, the evaluated categories.
        gt_counts: int64 [K, A], the metric's ground-truth count per category.
        accumulate: the metric's reduce of one category (``accumulate_category``, ``accumulate_category_voc``).

    Returns:
        category id -> ``(*accumulate(its records, gt_counts[k]), number of its records)``, for the
        categories with records: what ``combine`` / ``combine_voc`` take.
    """
    k_of = np.searchsorted(category_ids, records.category_id)
    order = np.argsort(k_of, kind="stable")
    bounds = np.searchsorted(k_of[order], np.arange(len(category_ids) + 1))
    parts = {}
    for k in np.flatnonzero(np.diff(bounds)):
        rows = order[bounds[k] : bounds[k + 1]]
        parts[int(category_ids[k])] = (*accumulate(records.take(rows), gt_counts[k]), len(rows))
    return parts


def every_category(
    category_ids: np.ndarray, gt_counts: np.ndarray, parts: dict[int, tuple[Any, ...]], accumulate: Accumulate
) -> list[tuple[Any, ...]]:
    """The reduction of every category of ``category_ids``, in order: ``parts[category id]`` (from
    :func:`accumulate_by_category`, in any number of pieces), or, for a category without records,
    ``(*accumulate(no records, gt_counts[k]), 0)``."""
    empty = MatchRecords.empty()
    return [
        parts[int(cat)] if int(cat) in parts else (*accumulate(empty, gt_counts[k]), 0)
        for k, cat in enumerate(category_ids)
    ]


def mean_valid(values: np.ndarray) -> float:
    """pycocotools' ``np.mean(s[s > -1])``: the mean over the values that are not -1 (no ground truth),
    -1 when none is."""
    valid = values[values > -1]
    return float(np.mean(valid)) if len(valid) else -1.0
