"""COCO bbox evaluation with exactly pycocotools' numbers, as a map over images and a reduce.

The map, :func:`match_images`, does what ``COCOeval.evaluateImg`` does for every image and category:
sort the detections, keep the first 100, match them greedily to the ground truth at each IoU threshold
and area range. It returns one compact record per detection (:class:`MatchRecords`): score, image, rank,
and two bit sets, true positive and ignored, over (area range, IoU threshold). Images are independent, so
any split of the images over processes gives the same records.

The reduce (:mod:`detbatch.metrics.coco_reduce`) does what ``accumulate`` and ``summarize`` do, one category
at a time: a total-order sort of the category's records, cumulative counts, the precision envelope and
the recall-threshold lookup.

Ties between equal scores: pycocotools keeps the order of its results list (stable mergesort). Here that
order is defined as (``image_id``, ``category_id``, score descending, ``x_min``, ``y_min``, ``x_max``,
``y_max``), and the numbers equal pycocotools fed the detections in that order, whatever order they
arrive in. Detections are cast to float64 first and converted to ``[x, y, x_max - x, y_max - y]``, the
COCO results format; IoU and everything after is float64, as in pycocotools.

The columns both metrics share (:class:`GroundTruth`, :class:`Detections`, :class:`MatchRecords`,
:func:`evaluated_detections`) live in :mod:`detbatch.metrics.columns` and are importable from here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from detbatch.metrics.boxes import paired_iou, xyxy_to_xywh
from detbatch.metrics.columns import Detections, GroundTruth, MatchRecords, evaluated_detections
from detbatch.metrics.grouping import DetectionPairs, count_per_category, pair_detections, ragged_arange

# pycocotools' Params.setDetParams: linspace, not arange, whose points drift above the true values.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETECTIONS = (1, 10, 100)
# [lo, hi] inclusive on both sides, compared with the ground truth's `area` field (not w*h) and the
# detection's w*h.
AREA_RANGES = np.array([[0**2, 1e5**2], [0**2, 32**2], [32**2, 96**2], [96**2, 1e5**2]], dtype=np.float64)
AREA_LABELS = ("all", "small", "medium", "large")
# evaluateImg starts each search at min(t, 1 - 1e-10): an IoU of exactly 1 never has to beat 1.
MATCH_IOU_CAP = 1 - 1e-10
MATCH_THRESHOLDS = np.minimum(IOU_THRESHOLDS, MATCH_IOU_CAP)
NUM_THRESHOLDS, NUM_AREAS = len(IOU_THRESHOLDS), len(AREA_RANGES)

# Bound on the bool tensors of one matching step, [pairs, A, T, G] elements, to keep memory flat.
MATCH_CHUNK_ELEMENTS = 1 << 21

# The shared columns are part of this module's API too: code outside metrics imports them from here.
__all__ = [
    "AREA_LABELS",
    "AREA_RANGES",
    "IOU_THRESHOLDS",
    "MATCH_CHUNK_ELEMENTS",
    "MATCH_IOU_CAP",
    "MATCH_THRESHOLDS",
    "MAX_DETECTIONS",
    "NUM_AREAS",
    "NUM_THRESHOLDS",
    "RECALL_THRESHOLDS",
    "Detections",
    "GroundTruth",
    "MatchRecords",
    "count_ground_truth",
    "evaluated_detections",
    "Matching",
    "match_images",
    "matching",
    "pack_bits",
]


def pack_bits(flags: np.ndarray) -> np.ndarray:
    """uint64 [N] from bool [N, B <= 64]: bit ``i`` is ``flags[:, i]``."""
    packed = np.packbits(flags.reshape(len(flags), -1), axis=1, bitorder="little")
    out = np.zeros((len(flags), 8), dtype=np.uint8)
    out[:, : packed.shape[1]] = packed
    return out.view("<u8").ravel().astype(np.uint64)


@dataclass(frozen=True)
class _Candidates:
    """What the greedy matching reads: N detections in P pairs, their E edges, G annotations.

    Attributes:
        pairs: the detections in (image, category) pairs and each pair's ground truth.
        edge_start: int64 [N], each detection's first edge in ``iou``. A detection ranked below maxDets
            has one edge per ground truth of its pair, in ``pairs.gt_order`` order; the others none.
        iou: float64 [E], pycocotools' IoU of each edge (``bbIou``, crowd-aware).
        gt_crowd: bool [G], per annotation: a crowd is never used up.
        gt_ignore: bool [G, A], per annotation and area range: a match to it is ignored there (a crowd, or
            an ``area`` outside the range).
    """

    pairs: DetectionPairs
    edge_start: np.ndarray
    iou: np.ndarray
    gt_crowd: np.ndarray
    gt_ignore: np.ndarray


@dataclass(frozen=True)
class _Walk:
    """Detections to walk through the greedy matching, pair after pair.

    Attributes:
        pair: int64 [Q], the pairs (numbers of :class:`DetectionPairs`).
        count: int64 [Q] >= 1, how many detections of each pair to walk.
        det: int64 [D = sum(count)], the detections (rows of ``DetectionPairs.dt``): ``pair[0]``'s
            ``count[0]`` in rank order, then ``pair[1]``'s, and so on.
    """

    pair: np.ndarray
    count: np.ndarray
    det: np.ndarray

    @classmethod
    def of(cls, det: np.ndarray, det_pair: np.ndarray) -> _Walk:
        """The walk over ``det`` (int64 [D], sorted), ``det_pair`` (int64 [N]) the pair of every detection."""
        pair, count = np.unique(det_pair[det], return_counts=True)
        return cls(pair, count, det)

    def start(self) -> np.ndarray:
        """int64 [Q], where each pair's detections start in ``det``."""
        return np.cumsum(self.count) - self.count

    def owner(self) -> np.ndarray:
        """int64 [D], each detection's place in ``pair``."""
        return np.repeat(np.arange(len(self.pair)), self.count)

    def take(self, index: np.ndarray) -> _Walk:
        """The walk over the pairs ``pair[index]``, in that order."""
        count = self.count[index]
        return _Walk(self.pair[index], count, self.det[np.repeat(self.start()[index], count) + ragged_arange(count)])


@dataclass(frozen=True)
class _Decisions:
    """What the greedy matching decided for the detections of a walk.

    Attributes:
        det: int64 [D], the detections (``_Walk.det``).
        matched: bool [D, A, T], the detection took (or, for a crowd, shared) a ground truth at IoU
            threshold ``t`` in area range ``a``.
        to_ignored: bool [D, A, T], the ground truth it took is ignored there.
        taken_at_50: int64 [D], the annotation (row of the :class:`GroundTruth`) it took at IoU 0.5 in
            area range ``all``, -1 for none.
    """

    det: np.ndarray
    matched: np.ndarray
    to_ignored: np.ndarray
    taken_at_50: np.ndarray


@dataclass(frozen=True)
class Matching:
    """What :func:`matching` gives: the records, and what the TIDE map (:mod:`detbatch.metrics.tide`) reads.

    Attributes:
        records: :class:`MatchRecords` [N].
        dt: :class:`Detections` [N], the detection of each record, row for row.
        taken_at_50: int64 [N], the annotation (row of the :class:`GroundTruth`) each detection took at
            IoU 0.5 in area range ``all`` (a crowd too), -1 for none: the match behind ``tp`` bit 0.
    """

    records: MatchRecords
    dt: Detections
    taken_at_50: np.ndarray


def match_images(gt: GroundTruth, dt: Detections) -> MatchRecords:
    """Match detections to ground truth per image and category, as ``COCOeval.evaluateImg``.

    Any set of whole images can be passed (one, a batch, a shard of the dataset); ``gt`` may hold more
    images than ``dt``. Detections of images or categories not in ``gt`` are dropped.
    """
    return matching(gt, dt).records


def matching(gt: GroundTruth, dt: Detections) -> Matching:
    """:func:`match_images`, with the detections of the records and the annotation each took at IoU 0.5."""
    dt, _ = evaluated_detections(gt, dt)
    n = len(dt)
    if n == 0:
        return Matching(MatchRecords.empty(), dt, np.zeros(0, dtype=np.int64))
    pairs = pair_detections(gt, dt)
    xywh = xyxy_to_xywh(pairs.dt.boxes)
    det_area = xywh[:, 2] * xywh[:, 3]
    det_outside = (det_area[:, None] < AREA_RANGES[:, 0]) | (det_area[:, None] > AREA_RANGES[:, 1])

    # Every (detection, ground truth) of the same pair, detections beyond maxDets left out.
    within = pairs.rank < MAX_DETECTIONS[-1]
    edges = pairs.edges(within)
    iou = paired_iou(xywh[edges.det], gt.boxes[edges.gt], gt.iscrowd[edges.gt])
    # Only detections that reach the lowest threshold somewhere can match or change what is matched.
    relevant = np.zeros(n, dtype=bool)
    relevant[edges.det[iou >= MATCH_THRESHOLDS.min()]] = True

    matched = np.zeros((n, NUM_AREAS, NUM_THRESHOLDS), dtype=bool)
    to_ignored = np.zeros_like(matched)
    taken_at_50 = np.full(n, -1, dtype=np.int64)
    if relevant.any():
        gt_outside = (gt.area[:, None] < AREA_RANGES[:, 0]) | (gt.area[:, None] > AREA_RANGES[:, 1])
        candidates = _Candidates(pairs, edges.start, iou, gt.iscrowd, gt.iscrowd[:, None] | gt_outside)
        for decided in _match_relevant(candidates, _Walk.of(np.flatnonzero(relevant), pairs.pair)):
            matched[decided.det] = decided.matched
            to_ignored[decided.det] = decided.to_ignored
            taken_at_50[decided.det] = decided.taken_at_50

    ignored = to_ignored | (~matched & det_outside[:, :, None])
    tp = matched & ~to_ignored
    tp[~within] = False
    ignored[~within] = False
    return Matching(pairs.records(tp=pack_bits(tp), ignored=pack_bits(ignored)), pairs.dt, taken_at_50)


def _match_relevant(candidates: _Candidates, walk: _Walk) -> Iterator[_Decisions]:
    """The greedy matching of ``evaluateImg``, run for many pairs at once, a group of pairs at a time.

    ``walk`` holds the detections that reach the lowest threshold. Pairs with one ground truth are
    matched in closed form; the others are grouped by their ground-truth count rounded up to a power
    of two, and walked one detection rank at a time, all pairs, area ranges and thresholds together.
    """
    n_gt = candidates.pairs.gt_count[walk.pair]
    width = 1 << np.ceil(np.log2(n_gt)).astype(np.int64)
    single = np.flatnonzero(n_gt == 1)
    if len(single):
        yield _match_single(candidates, walk.take(single))
    for g_pad in np.unique(width[n_gt > 1]):
        in_width = np.flatnonzero((width == g_pad) & (n_gt > 1))
        in_width = in_width[np.argsort(-walk.count[in_width], kind="stable")]
        chunk = max(1, MATCH_CHUNK_ELEMENTS // (NUM_AREAS * NUM_THRESHOLDS * int(g_pad)))
        for c0 in range(0, len(in_width), chunk):
            yield _match_chunk(int(g_pad), candidates, walk.take(in_width[c0 : c0 + chunk]))


def _match_single(candidates: _Candidates, walk: _Walk) -> _Decisions:
    """The greedy matching for pairs with one ground truth, in closed form: at each threshold the first
    detection reaching it takes the ground truth; a crowd is never used up, so every such detection
    matches it. A match is ignored in the area ranges where the ground truth is."""
    pairs = candidates.pairs
    local_pair = walk.owner()
    g = pairs.gt_order[pairs.gt_start[walk.pair]][local_pair]  # the pair's ground truth, per detection
    reaches = candidates.iou[candidates.edge_start[walk.det]][:, None] >= MATCH_THRESHOLDS[None, :]  # [D, T]
    seen = np.cumsum(reaches, axis=0)
    seen_before = np.vstack([np.zeros((1, NUM_THRESHOLDS), dtype=seen.dtype), seen])[walk.start()]
    before = seen_before[local_pair]  # reached by the rows of earlier pairs
    hit = reaches & ((seen - before == 1) | candidates.gt_crowd[g][:, None])
    return _Decisions(
        det=walk.det,
        matched=np.broadcast_to(hit[:, None, :], (len(walk.det), NUM_AREAS, NUM_THRESHOLDS)),
        to_ignored=hit[:, None, :] & candidates.gt_ignore[g][:, :, None],
        taken_at_50=np.where(hit[:, 0], g, -1),
    )


def _match_chunk(g_pad: int, candidates: _Candidates, walk: _Walk) -> _Decisions:
    """The greedy matching for pairs of at most ``g_pad`` ground truth each, ``walk`` sorted by
    ``count`` descending, one detection rank at a time over padded [P, A, T, G] tensors."""
    pairs = candidates.pairs
    p, d_max = len(walk.pair), int(walk.count.max())
    # Padded [P, D, G] IoU; padding is -1, below every threshold, so it is never a candidate.
    local_pair = walk.owner()
    local_rank = ragged_arange(walk.count)
    per_det_gt = pairs.gt_count[walk.pair][local_pair]
    e_local = np.repeat(np.arange(len(walk.det)), per_det_gt)
    g_local = ragged_arange(per_det_gt)
    ious = np.full((p, d_max, g_pad), -1.0)
    edge = candidates.edge_start[walk.det][e_local] + g_local
    ious[local_pair[e_local], local_rank[e_local], g_local] = candidates.iou[edge]

    g_pair, g_slot, g_index = pairs.ground_truth_of(walk.pair)
    crowd = np.zeros((p, g_pad), dtype=bool)
    crowd[g_pair, g_slot] = candidates.gt_crowd[g_index]
    ignore = np.zeros((p, NUM_AREAS, g_pad), dtype=bool)
    ignore[g_pair, :, g_slot] = candidates.gt_ignore[g_index]
    annotation = np.full((p, g_pad), -1, dtype=np.int64)  # the row of the GroundTruth in each slot
    annotation[g_pair, g_slot] = g_index

    thresholds = MATCH_THRESHOLDS[None, None, :, None]
    taken = np.zeros((p, NUM_AREAS, NUM_THRESHOLDS, g_pad), dtype=bool)
    out_matched = np.zeros((p, NUM_AREAS, NUM_THRESHOLDS, d_max), dtype=bool)
    out_ignored = np.zeros_like(out_matched)
    out_taken = np.full((p, d_max), -1, dtype=np.int64)
    for j in range(d_max):
        a = int(np.count_nonzero(walk.count > j))  # pairs are sorted by count, descending
        row = ious[:a, j, None, None, :]  # [a, 1, 1, G]
        # evaluateImg: a matched ground truth is skipped unless it is a crowd; the best IoU >= t wins,
        # the last of equal IoUs; regular ground truth first, ignored only if no regular one matched.
        candidate = (row >= thresholds) & (~taken[:a] | crowd[:a, None, None, :])
        regular = candidate & ~ignore[:a, :, None, :]
        fallback = candidate & ignore[:a, :, None, :]
        has_regular, has_fallback = regular.any(-1), fallback.any(-1)
        best_regular = g_pad - 1 - np.argmax(np.where(regular, row, -1.0)[..., ::-1], axis=-1)
        best_fallback = g_pad - 1 - np.argmax(np.where(fallback, row, -1.0)[..., ::-1], axis=-1)
        hit = has_regular | has_fallback
        choice = np.where(has_regular, best_regular, best_fallback)
        pi, ai, ti = np.nonzero(hit)
        taken[pi, ai, ti, choice[pi, ai, ti]] = True
        out_matched[:a, :, :, j] = hit
        out_ignored[:a, :, :, j] = ~has_regular & has_fallback
        out_taken[:a, j] = np.where(hit[:, 0, 0], annotation[np.arange(a), choice[:, 0, 0]], -1)
    return _Decisions(
        det=walk.det,
        matched=out_matched[local_pair, :, :, local_rank],
        to_ignored=out_ignored[local_pair, :, :, local_rank],
        taken_at_50=out_taken[local_pair, local_rank],
    )


def count_ground_truth(gt: GroundTruth) -> np.ndarray:
    """int64 [K, A]: per category (``gt.category_ids``) and area range, the ground truth that counts
    (not crowd, ``area`` within the range): pycocotools' ``npig``."""
    counted = ~gt.iscrowd[:, None] & (gt.area[:, None] >= AREA_RANGES[:, 0]) & (gt.area[:, None] <= AREA_RANGES[:, 1])
    return count_per_category(gt, counted)
