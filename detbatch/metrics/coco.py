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
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from detbatch.metrics.boxes import paired_iou, xyxy_to_xywh
from detbatch.metrics.order import detection_order

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
_MATCH_CHUNK_ELEMENTS = 1 << 21


def _as(array: Any, dtype: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
    out = np.ascontiguousarray(np.asarray(array, dtype=dtype))
    return out.reshape(shape) if shape is not None else out


@dataclass(frozen=True)
class GroundTruth:
    """COCO ground truth as columns, one row per annotation, plus the evaluated images and categories.

    Attributes:
        image_id: int64 [G].
        category_id: int64 [G].
        boxes: float64 [G, 4] xywh (COCO ``bbox``), pixels.
        area: float64 [G], the annotation's ``area``: it decides the area range (small/medium/large).
        iscrowd: bool [G]; crowd regions are ignored, and their IoU is over the detection's area.
        image_ids: int64 [I] sorted unique, the evaluated images (COCO ``images``).
        category_ids: int64 [K] sorted unique, the evaluated categories (COCO ``categories``).
        difficult: bool [G], the annotation's ``difficult`` (Pascal VOC only; COCO ignores it).
    """

    image_id: np.ndarray
    category_id: np.ndarray
    boxes: np.ndarray
    area: np.ndarray
    iscrowd: np.ndarray
    image_ids: np.ndarray
    category_ids: np.ndarray
    difficult: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(np.asarray(self.image_id))
        for name, dtype, shape in (
            ("image_id", np.int64, (n,)),
            ("category_id", np.int64, (n,)),
            ("boxes", np.float64, (n, 4)),
            ("area", np.float64, (n,)),
            ("iscrowd", bool, (n,)),
            ("difficult", bool, (n,)),
        ):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.zeros(n, dtype=dtype))
            object.__setattr__(self, name, _as(getattr(self, name), dtype, shape))
        object.__setattr__(self, "image_ids", np.unique(_as(self.image_ids, np.int64)))
        object.__setattr__(self, "category_ids", np.unique(_as(self.category_ids, np.int64)))
        unknown = ~np.isin(self.image_id, self.image_ids) | ~np.isin(self.category_id, self.category_ids)
        if unknown.any():
            i = int(np.flatnonzero(unknown)[0])
            raise ValueError(
                f"annotation {i} has image_id={self.image_id[i]}, category_id={self.category_id[i]}, not "
                f"among image_ids/category_ids; add them or drop the annotation"
            )

    def __len__(self) -> int:
        return len(self.image_id)

    @classmethod
    def from_coco(cls, dataset: dict[str, Any]) -> GroundTruth:
        """From a COCO instances dict (``images``, ``categories``, ``annotations``).

        Annotations of images or categories not listed are dropped, as pycocotools does. A missing
        ``iscrowd`` reads as 0, a missing ``area`` as ``w * h`` (pycocotools would raise).
        """
        image_ids = np.array([im["id"] for im in dataset.get("images", [])], dtype=np.int64)
        category_ids = np.array([c["id"] for c in dataset.get("categories", [])], dtype=np.int64)
        anns = dataset.get("annotations", [])
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        area = np.array([a.get("area", np.nan) for a in anns], dtype=np.float64)
        no_area = np.isnan(area)
        area[no_area] = boxes[no_area, 2] * boxes[no_area, 3]
        image_id = np.array([a["image_id"] for a in anns], dtype=np.int64)
        category_id = np.array([a["category_id"] for a in anns], dtype=np.int64)
        keep = np.isin(image_id, image_ids) & np.isin(category_id, category_ids)
        return cls(
            image_id=image_id[keep],
            category_id=category_id[keep],
            boxes=boxes[keep],
            area=area[keep],
            iscrowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)[keep],
            image_ids=image_ids,
            category_ids=category_ids,
            difficult=np.array([bool(a.get("difficult", 0)) for a in anns], dtype=bool)[keep],
        )

    def select_images(self, image_ids: np.ndarray) -> GroundTruth:
        """The same ground truth restricted to ``image_ids`` (which must be among ``self.image_ids``)."""
        ids = np.unique(_as(image_ids, np.int64))
        keep = np.isin(self.image_id, ids)
        return GroundTruth(
            self.image_id[keep], self.category_id[keep], self.boxes[keep], self.area[keep],
            self.iscrowd[keep], ids, self.category_ids, self.difficult[keep],
        )  # fmt: skip


    def split_images(self, parts: int) -> list[GroundTruth]:
        """The ground truth in ``parts`` pieces of whole images: image ``image_ids[i]`` goes to piece
        ``i % parts`` (one pass, not one selection per piece)."""
        piece = np.searchsorted(self.image_ids, self.image_id) % parts
        order = np.argsort(piece, kind="stable")
        bounds = np.searchsorted(piece[order], np.arange(parts + 1))
        out = []
        for p in range(parts):
            rows = order[bounds[p] : bounds[p + 1]]
            out.append(GroundTruth(
                self.image_id[rows], self.category_id[rows], self.boxes[rows], self.area[rows],
                self.iscrowd[rows], self.image_ids[p::parts], self.category_ids, self.difficult[rows],
            ))  # fmt: skip
        return out


@dataclass(frozen=True)
class Detections:
    """Detections as columns, one row per box.

    Attributes:
        image_id: int64 [N].
        category_id: int64 [N].
        score: float32 or float64 [N] (kept as given: scores are compared, never computed on).
        boxes: float32 or float64 [N, 4] xyxy, pixels of the original image.
    """

    image_id: np.ndarray
    category_id: np.ndarray
    score: np.ndarray
    boxes: np.ndarray

    def __post_init__(self) -> None:
        n = len(np.asarray(self.image_id))
        object.__setattr__(self, "image_id", _as(self.image_id, np.int64, (n,)))
        object.__setattr__(self, "category_id", _as(self.category_id, np.int64, (n,)))
        score = np.asarray(self.score)
        boxes = np.asarray(self.boxes)
        object.__setattr__(self, "score", _as(score, score.dtype if score.dtype.kind == "f" else np.float64, (n,)))
        object.__setattr__(self, "boxes", _as(boxes, boxes.dtype if boxes.dtype.kind == "f" else np.float64, (n, 4)))

    def __len__(self) -> int:
        return len(self.image_id)

    def take(self, index: np.ndarray) -> Detections:
        return Detections(self.image_id[index], self.category_id[index], self.score[index], self.boxes[index])


def evaluated_detections(gt: GroundTruth, dt: Detections) -> tuple[Detections, dict[str, int]]:
    """The detections pycocotools would evaluate, and how many of each kind were dropped.

    Dropped: detections of images not in ``gt.image_ids`` (pycocotools refuses them), of categories not
    in ``gt.category_ids`` (pycocotools drops them), and with a non-finite score or box (undefined there).
    """
    known_image = np.isin(dt.image_id, gt.image_ids)
    known_category = np.isin(dt.category_id, gt.category_ids)
    finite = np.isfinite(dt.score) & np.isfinite(dt.boxes).all(axis=1)
    keep = known_image & known_category & finite
    counts = {
        "unknown_image": int((~known_image).sum()),
        "unknown_category": int((known_image & ~known_category).sum()),
        "non_finite": int((known_image & known_category & ~finite).sum()),
    }
    return (dt if keep.all() else dt.take(keep)), counts


@dataclass(frozen=True)
class MatchRecords:
    """The outcome of matching, one row per evaluated detection: all that the reduce needs.

    Attributes:
        category_id: int64 [N].
        image_id: int64 [N].
        rank: int32 [N], position among the detections of its (image, category) in the tie order;
            rows with ``rank >= 100`` are only counted.
        score: float [N].
        tp: uint64 [N], bit ``a * 10 + t`` set where the detection is a true positive at IoU threshold
            ``t`` in area range ``a`` (``AREA_LABELS``, ``IOU_THRESHOLDS``).
        ignored: uint64 [N], same bits: ignored (matched a crowd or out-of-range ground truth, or
            unmatched and itself outside the area range). Neither bit: a false positive.
    """

    category_id: np.ndarray
    image_id: np.ndarray
    rank: np.ndarray
    score: np.ndarray
    tp: np.ndarray
    ignored: np.ndarray

    def __len__(self) -> int:
        return len(self.rank)

    def columns(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def take(self, index: np.ndarray) -> MatchRecords:
        return MatchRecords(**{k: v[index] for k, v in self.columns().items()})

    @classmethod
    def concat(cls, parts: list[MatchRecords]) -> MatchRecords:
        if not parts:
            return cls.empty()
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    @classmethod
    def empty(cls) -> MatchRecords:
        e = np.zeros(0, dtype=np.int64)
        u = np.zeros(0, dtype=np.uint64)
        return cls(e, e, e.astype(np.int32), e.astype(np.float32), u, u)


def ragged_arange(counts: np.ndarray) -> np.ndarray:
    """``concat(arange(c) for c in counts)`` without a Python loop."""
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    return np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)


def pack_bits(flags: np.ndarray) -> np.ndarray:
    """uint64 [N] from bool [N, B <= 64]: bit ``i`` is ``flags[:, i]``."""
    packed = np.packbits(flags.reshape(len(flags), -1), axis=1, bitorder="little")
    out = np.zeros((len(flags), 8), dtype=np.uint8)
    out[:, : packed.shape[1]] = packed
    return out.view("<u8").ravel().astype(np.uint64)


def match_images(gt: GroundTruth, dt: Detections) -> MatchRecords:
    """Match detections to ground truth per image and category, as ``COCOeval.evaluateImg``.

    Any set of whole images can be passed (one, a batch, a shard of the dataset); ``gt`` may hold more
    images than ``dt``. Detections of images or categories not in ``gt`` are dropped.
    """
    dt, _ = evaluated_detections(gt, dt)
    n = len(dt)
    if n == 0:
        return MatchRecords.empty()
    k = len(gt.category_ids)
    key = np.searchsorted(gt.image_ids, dt.image_id) * k + np.searchsorted(gt.category_ids, dt.category_id)
    order = detection_order(key, dt.score, dt.boxes)
    key, dt = key[order], dt.take(order)

    new_pair = np.ones(n, dtype=bool)
    new_pair[1:] = key[1:] != key[:-1]
    pair_start = np.flatnonzero(new_pair)
    pair_size = np.diff(np.append(pair_start, n))
    det_pair = np.repeat(np.arange(len(pair_start)), pair_size)
    rank = np.arange(n) - pair_start[det_pair]

    gt_key = np.searchsorted(gt.image_ids, gt.image_id) * k + np.searchsorted(gt.category_ids, gt.category_id)
    gt_order = np.argsort(gt_key, kind="stable")  # annotation order within a pair, as pycocotools
    gt_key = gt_key[gt_order]
    pair_gt_lo = np.searchsorted(gt_key, key[pair_start], side="left")
    pair_gt_n = np.searchsorted(gt_key, key[pair_start], side="right") - pair_gt_lo

    xywh = xyxy_to_xywh(dt.boxes)
    det_area = xywh[:, 2] * xywh[:, 3]
    det_outside = (det_area[:, None] < AREA_RANGES[:, 0]) | (det_area[:, None] > AREA_RANGES[:, 1])

    # Every (detection, ground truth) of the same pair, detections beyond maxDets left out.
    det_n_gt = np.where(rank < MAX_DETECTIONS[-1], pair_gt_n[det_pair], 0)
    edge_det = np.repeat(np.arange(n), det_n_gt)
    edge_gt = gt_order[pair_gt_lo[det_pair[edge_det]] + ragged_arange(det_n_gt)]
    iou = paired_iou(xywh[edge_det], gt.boxes[edge_gt], gt.iscrowd[edge_gt])
    # Only detections that reach the lowest threshold somewhere can match or change what is matched.
    relevant = np.zeros(n, dtype=bool)
    relevant[edge_det[iou >= MATCH_THRESHOLDS.min()]] = True

    matched = np.zeros((n, NUM_AREAS, NUM_THRESHOLDS), dtype=bool)
    to_ignored = np.zeros_like(matched)
    if relevant.any():
        gt_outside = (gt.area[:, None] < AREA_RANGES[:, 0]) | (gt.area[:, None] > AREA_RANGES[:, 1])
        gt_ignore = gt.iscrowd[:, None] | gt_outside  # [G, A]
        edge_start = np.cumsum(det_n_gt) - det_n_gt
        _match_relevant(
            np.flatnonzero(relevant), det_pair, pair_gt_lo, pair_gt_n, edge_start, iou,
            gt_order, gt.iscrowd, gt_ignore, matched, to_ignored,
        )  # fmt: skip

    ignored = to_ignored | (~matched & det_outside[:, :, None])
    tp = matched & ~to_ignored
    beyond = rank >= MAX_DETECTIONS[-1]
    tp[beyond] = False
    ignored[beyond] = False
    return MatchRecords(
        category_id=dt.category_id,
        image_id=dt.image_id,
        rank=rank.astype(np.int32),
        score=dt.score,
        tp=pack_bits(tp),
        ignored=pack_bits(ignored),
    )


def _match_relevant(
    rel: np.ndarray,
    det_pair: np.ndarray,
    pair_gt_lo: np.ndarray,
    pair_gt_n: np.ndarray,
    edge_start: np.ndarray,
    iou: np.ndarray,
    gt_order: np.ndarray,
    gt_crowd: np.ndarray,
    gt_ignore: np.ndarray,
    matched: np.ndarray,
    to_ignored: np.ndarray,
) -> None:
    """The greedy matching of ``evaluateImg``, run for many pairs at once; fills ``matched``/``to_ignored``.

    ``rel`` are the detections to walk (sorted, so in rank order within each pair). Pairs are grouped by
    their ground-truth count rounded up to a power of two, and walked one detection rank at a time, all
    pairs, area ranges and thresholds together.
    """
    rel_pair = det_pair[rel]
    pairs, first, n_rel = np.unique(rel_pair, return_index=True, return_counts=True)
    n_gt = pair_gt_n[pairs]
    width = 1 << np.ceil(np.log2(n_gt)).astype(np.int64)
    single = np.flatnonzero(n_gt == 1)
    if len(single):
        _match_single(pairs[single], first[single], n_rel[single], rel, pair_gt_lo, edge_start, iou, gt_order, gt_crowd, gt_ignore, matched, to_ignored)
    for g_pad in np.unique(width[n_gt > 1]):
        in_width = np.flatnonzero((width == g_pad) & (n_gt > 1))
        in_width = in_width[np.argsort(-n_rel[in_width], kind="stable")]
        chunk = max(1, _MATCH_CHUNK_ELEMENTS // (NUM_AREAS * NUM_THRESHOLDS * int(g_pad)))
        for c0 in range(0, len(in_width), chunk):
            sel = in_width[c0 : c0 + chunk]
            _match_chunk(
                int(g_pad), pairs[sel], first[sel], n_rel[sel], rel, pair_gt_lo, pair_gt_n, edge_start,
                iou, gt_order, gt_crowd, gt_ignore, matched, to_ignored,
            )  # fmt: skip


def _match_single(
    pairs: np.ndarray,
    first: np.ndarray,
    n_rel: np.ndarray,
    rel: np.ndarray,
    pair_gt_lo: np.ndarray,
    edge_start: np.ndarray,
    iou: np.ndarray,
    gt_order: np.ndarray,
    gt_crowd: np.ndarray,
    gt_ignore: np.ndarray,
    matched: np.ndarray,
    to_ignored: np.ndarray,
) -> None:
    """The greedy matching for pairs with one ground truth, in closed form: at each threshold the first
    detection reaching it takes the ground truth; a crowd is never used up, so every such detection
    matches it. A match is ignored in the area ranges where the ground truth is."""
    local_pair = np.repeat(np.arange(len(pairs)), n_rel)
    det = rel[np.repeat(first, n_rel) + ragged_arange(n_rel)]
    g = gt_order[pair_gt_lo[pairs]][local_pair]  # the pair's ground truth, per detection
    reaches = iou[edge_start[det]][:, None] >= MATCH_THRESHOLDS[None, :]  # [D, T]
    seen = np.cumsum(reaches, axis=0)
    start = np.cumsum(n_rel) - n_rel  # rows of each pair are contiguous, in rank order
    seen_before = np.vstack([np.zeros((1, NUM_THRESHOLDS), dtype=seen.dtype), seen])[start]
    before = seen_before[local_pair]  # reached by the rows of earlier pairs
    hit = reaches & ((seen - before == 1) | gt_crowd[g][:, None])
    matched[det] = hit[:, None, :]
    to_ignored[det] = hit[:, None, :] & gt_ignore[g][:, :, None]


def _match_chunk(
    g_pad: int,
    pairs: np.ndarray,
    first: np.ndarray,
    n_rel: np.ndarray,
    rel: np.ndarray,
    pair_gt_lo: np.ndarray,
    pair_gt_n: np.ndarray,
    edge_start: np.ndarray,
    iou: np.ndarray,
    gt_order: np.ndarray,
    gt_crowd: np.ndarray,
    gt_ignore: np.ndarray,
    matched: np.ndarray,
    to_ignored: np.ndarray,
) -> None:
    p, d_max = len(pairs), int(n_rel.max())
    n_gt = pair_gt_n[pairs]
    # Padded [P, D, G] IoU; padding is -1, below every threshold, so it is never a candidate.
    local_pair = np.repeat(np.arange(p), n_rel)
    local_rank = ragged_arange(n_rel)
    det = rel[np.repeat(first, n_rel) + local_rank]
    per_det_gt = n_gt[local_pair]
    e_local = np.repeat(np.arange(len(det)), per_det_gt)
    g_local = ragged_arange(per_det_gt)
    ious = np.full((p, d_max, g_pad), -1.0)
    ious[local_pair[e_local], local_rank[e_local], g_local] = iou[edge_start[det][e_local] + g_local]

    g_pair = np.repeat(np.arange(p), n_gt)
    g_slot = ragged_arange(n_gt)
    g_index = gt_order[pair_gt_lo[pairs][g_pair] + g_slot]
    crowd = np.zeros((p, g_pad), dtype=bool)
    crowd[g_pair, g_slot] = gt_crowd[g_index]
    ignore = np.zeros((p, NUM_AREAS, g_pad), dtype=bool)
    ignore[g_pair, :, g_slot] = gt_ignore[g_index]

    thresholds = MATCH_THRESHOLDS[None, None, :, None]
    taken = np.zeros((p, NUM_AREAS, NUM_THRESHOLDS, g_pad), dtype=bool)
    out_matched = np.zeros((p, NUM_AREAS, NUM_THRESHOLDS, d_max), dtype=bool)
    out_ignored = np.zeros_like(out_matched)
    for j in range(d_max):
        a = int(np.count_nonzero(n_rel > j))  # pairs are sorted by n_rel, descending
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
    matched[det] = out_matched[local_pair, :, :, local_rank]
    to_ignored[det] = out_ignored[local_pair, :, :, local_rank]


def count_ground_truth(gt: GroundTruth) -> np.ndarray:
    """int64 [K, A]: per category (``gt.category_ids``) and area range, the ground truth that counts
    (not crowd, ``area`` within the range): pycocotools' ``npig``."""
    counted = ~gt.iscrowd[:, None] & (gt.area[:, None] >= AREA_RANGES[:, 0]) & (gt.area[:, None] <= AREA_RANGES[:, 1])
    cat = np.searchsorted(gt.category_ids, gt.category_id)
    out = np.zeros((len(gt.category_ids), NUM_AREAS), dtype=np.int64)
    np.add.at(out, cat, counted.astype(np.int64))
    return out
