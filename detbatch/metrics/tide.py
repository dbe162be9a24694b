"""The TIDE error breakdown (Bolya et al. 2020, ``tidecv``): why each false positive and each missed ground
truth cost AP50, and how much AP50 each kind of error costs (dAP) — docs/evaluate.md, "Error breakdown".

The map, :func:`error_records` (per set of whole images, in the COCO match step): every false positive of
COCO's matching at IoU 0.5, area ``all``, maxDets 100 gets one error type, tried in tidecv's order —

1. **localisation**: its best IoU with ground truth of its own category is in [0.1, 0.5];
2. **classification**: IoU >= 0.5 with ground truth of another category;
3. **duplicate**: IoU >= 0.5 with ground truth of its category that a higher-scored detection took;
4. **background**: IoU <= 0.1 with all ground truth (or its image has none);
5. **both**: anything else (wrong category and 0.1 < IoU < 0.5).

A localisation or classification error points at a ground truth; where that one is untaken, the
highest-scored error pointing at it would be the true positive if fixed (tidecv's ``BestGTMatch``); the
others are removed by the fix, as the other types are. A ground truth left untaken that no such error
points at is **missed**. The codes ride in the top byte of each record's ``tp`` bits (the reduces read
bits 0-39 only), so the records cost nothing more; a classification error that a fix would make a true
positive of another category also gets a *transfer* record in that category (inert for every other
reduce: beyond maxDets and ignored everywhere).

The reduce, :func:`category_errors` (per category, in the COCO reduce): AP50 as ``accumulate`` computes it,
of the category's records as they are and with each error type fixed; plus "false positives" (every
true positive ranked first) and "false negatives" (no ground truth left unmatched). :func:`combine_errors`
takes the means: dAP = mean fixed AP50 - mean AP50.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from detbatch.metrics.boxes import overlapping_pairs, xyxy_to_xywh
from detbatch.metrics.coco import MAX_DETECTIONS, RECALL_THRESHOLDS, Matching
from detbatch.metrics.columns import GroundTruth, MatchRecords
from detbatch.metrics.grouping import mean_valid, ragged_arange
from detbatch.metrics.order import descending_key, record_order

# tidecv's defaults (TIDE(pos_threshold=0.5, background_threshold=0.1)): the IoU of a true positive (COCO's
# first threshold, whose match is tp bit 0) and the IoU below which a detection covers no object.
POSITIVE_IOU = 0.5
BACKGROUND_IOU = 0.1

# The error types, in metrics.json's order; the code of each in the records (0: not an error).
ERROR_TYPES = ("classification", "localisation", "both", "duplicate", "background", "missed")
SPECIAL_TYPES = ("false_positives", "false_negatives")
CLS, LOC, BOTH, DUPE, BKG = 1, 2, 3, 4, 5
TRANSFER = 6  # a classification error of another category, as the true positive of this one it would be
BEST = 8  # flag: the error that a fix makes the true positive of the ground truth it points at
_SHIFT = np.uint64(56)  # the code's place in ``tp``: above the 40 bits of (area, IoU) that the reduces read
_IN_AREA_ALL_50 = np.uint64(1)  # bit 0: area "all", IoU 0.5
_IGNORED_EVERYWHERE = np.uint64((1 << 40) - 1)
# A transfer record's rank: beyond every maxDets, so that no other reduce counts it, and after the category's
# own records of equal score and image in the sweep.
TRANSFER_RANK = 1 << 20
# (false positive, ground truth) pairs compared at once: ~100 bytes each in flight, ~25 MiB.
EDGE_CHUNK = 1 << 18
_EPS = np.spacing(1)  # as coco_reduce: pycocotools' tp / (fp + tp + np.spacing(1))


def error_codes(records: MatchRecords) -> np.ndarray:
    """uint8 [N], the TIDE code of each record (0 where it is no error or was never classified)."""
    return (records.tp >> _SHIFT).astype(np.uint8)


def _segment_best(values: np.ndarray, start: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per segment ``values[start:start + count]`` (count >= 1, contiguous): the max, and the first place of it."""
    best = np.maximum.reduceat(values, start)
    owner = np.repeat(np.arange(len(start)), count)
    place = np.where(values == best[owner], np.arange(len(values)), len(values))
    return best, np.minimum.reduceat(place, start)


def error_records(gt: GroundTruth, m: Matching) -> MatchRecords:
    """The records of :func:`~detbatch.metrics.coco.matching` with each false positive's error code (written
    into ``m.records.tp``, in place), and a transfer record per classification error that a fix would make
    a true positive of another category (module docstring)."""
    records = m.records
    n = len(records)
    if n == 0:
        return records
    tp = (records.tp & _IN_AREA_ALL_50) != 0
    fp = (records.rank < MAX_DETECTIONS[-1]) & ~tp & ((records.ignored & _IN_AREA_ALL_50) == 0)
    taken = np.zeros(len(gt), dtype=bool)
    taken[m.taken_at_50[tp]] = True

    # Every (false positive, regular ground truth of its image), detection by detection, annotation order.
    f = np.flatnonzero(fp)
    regular = np.flatnonzero(~gt.iscrowd)
    g_image = np.searchsorted(gt.image_ids, gt.image_id[regular])
    by_image = np.argsort(g_image, kind="stable")
    rows, g_image = regular[by_image], g_image[by_image]
    d_image = np.searchsorted(gt.image_ids, records.image_id[f])
    first = np.searchsorted(g_image, d_image, side="left")
    count = np.searchsorted(g_image, d_image, side="right") - first
    code = np.full(len(f), BKG, dtype=np.uint8)  # an image without regular ground truth: background
    points_at = np.full(len(f), -1, dtype=np.int64)
    # In pieces of about EDGE_CHUNK edges, so that memory stays flat however many detections an image has.
    ends = np.searchsorted(np.cumsum(count), np.arange(EDGE_CHUNK, int(count.sum()) + EDGE_CHUNK, EDGE_CHUNK), side="right")
    boxes, gt_xywh = xyxy_to_xywh(m.dt.boxes[f]), gt.boxes
    for lo, hi in zip(np.concatenate(([0], ends[:-1])), ends):
        has = lo + np.flatnonzero(count[lo:hi] > 0)
        if len(has) == 0:
            continue
        c = count[has]
        e_det = np.repeat(has, c)
        e_gt = rows[np.repeat(first[has], c) + ragged_arange(c)]
        # Only pairs of IoU >= BACKGROUND_IOU can change a code: a false positive with none is background
        # (the default), and every test below is >= 0.1 or, for background, <= 0.1 of the largest IoU,
        # which such a pair holds. Most pairs of an image do not overlap at all, so this keeps few.
        near, iou = overlapping_pairs(boxes, gt_xywh, e_det, e_gt, BACKGROUND_IOU)
        e_det, e_gt = e_det[near], e_gt[near]
        if len(e_det) == 0:
            continue
        start = np.flatnonzero(np.concatenate(([True], e_det[1:] != e_det[:-1])))
        has, c = e_det[start], np.diff(np.append(start, len(e_det)))
        same = records.category_id[f[e_det]] == gt.category_id[e_gt]
        # tidecv multiplies IoUs by a 0/1 mask, so a category without ground truth here has best IoU 0
        same_best, same_at = _segment_best(np.where(same, iou, 0.0), start, c)
        other_best, other_at = _segment_best(np.where(same, 0.0, iou), start, c)
        dupe_best = np.maximum.reduceat(np.where(same & taken[e_gt], iou, 0.0), start)
        any_best = np.maximum.reduceat(iou, start)
        loc = (same_best >= BACKGROUND_IOU) & (same_best <= POSITIVE_IOU)
        cls = ~loc & (other_best >= POSITIVE_IOU)
        dupe = ~loc & ~cls & (dupe_best >= POSITIVE_IOU)
        bkg = ~loc & ~cls & ~dupe & (any_best <= BACKGROUND_IOU)
        code[has] = np.select([loc, cls, dupe, bkg], [LOC, CLS, DUPE, BKG], BOTH)
        points_at[has] = np.where(loc, e_gt[same_at], np.where(cls, e_gt[other_at], -1))

    # BestGTMatch: of the errors pointing at an untaken ground truth, the highest score is the fix (ties:
    # the lowest category id, then rank: fixed, whatever the partition).
    fixable = np.flatnonzero((points_at >= 0) & ~taken[np.maximum(points_at, 0)])
    order = np.lexsort((records.rank[f[fixable]], records.category_id[f[fixable]], -records.score[f[fixable]].astype(np.float64), points_at[fixable]))
    fixable = fixable[order]
    lead = np.ones(len(fixable), dtype=bool)
    lead[1:] = points_at[fixable][1:] != points_at[fixable][:-1]
    best = fixable[lead]
    code[best] |= BEST

    records.tp[f] |= code.astype(np.uint64) << _SHIFT
    moved = best[(code[best] & 7) == CLS]
    if len(moved) == 0:
        return records
    rows_of = f[moved]
    transfer = MatchRecords(
        category_id=gt.category_id[points_at[moved]],
        image_id=records.image_id[rows_of],
        rank=(records.rank[rows_of] + TRANSFER_RANK).astype(np.int32),
        score=records.score[rows_of],
        tp=np.full(len(moved), np.uint64(TRANSFER | BEST) << _SHIFT, dtype=np.uint64),
        ignored=np.full(len(moved), _IGNORED_EVERYWHERE, dtype=np.uint64),
    )
    return MatchRecords.concat([records, transfer])


def _ap50_at(counted: np.ndarray, n_kept: int, num_gt: int) -> float:
    """AP at one IoU threshold of a sorted list of ``n_kept`` counted records, from ``counted`` (int [P],
    increasing): for each true positive, the records up to and including it (its 1-based place in the
    list). ``accumulate``'s expressions (coco_reduce), then the mean over the recall thresholds. NaN when
    ``num_gt`` is 0 and the list is empty (no AP: the category leaves the mean, as in tidecv), 0 when
    ``num_gt`` is 0 and false positives remain (tidecv's AP of a class without ground truth)."""
    if num_gt == 0:
        return float("nan") if n_kept == 0 else 0.0
    precision = np.zeros(len(RECALL_THRESHOLDS))
    if len(counted):
        j = np.arange(1, len(counted) + 1, dtype=np.float64)
        pr = j / (counted.astype(np.float64) + _EPS)
        rc = j / num_gt
        envelope = np.maximum.accumulate(pr[::-1])[::-1]
        at = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
        reached = at < len(rc)
        precision[reached] = envelope[at[reached]]
    return float(np.mean(precision))


def _ap50(is_tp: np.ndarray, num_gt: int) -> float:
    """:func:`_ap50_at` of a sorted list of counted records given as bool [L] (true positive)."""
    return _ap50_at(np.flatnonzero(is_tp) + 1, len(is_tp), num_gt)


@dataclass(frozen=True)
class CategoryErrors:
    """One category's error breakdown, from its records (its own and the transfers into it).

    Attributes:
        num_gt: counted ground truth (not crowd), area all.
        counts: int64 [6], its errors by :data:`ERROR_TYPES`: its false positives by type, its missed
            ground truth.
        ap: float64 [1 + 6 + 2], AP50 as it is, then with each of :data:`ERROR_TYPES` fixed, then with
            :data:`SPECIAL_TYPES` fixed; NaN where the category has no AP (no ground truth left, no detection).
        transfers: the records that are not its own detections (to leave out of its detection count).
    """

    num_gt: int
    counts: np.ndarray
    ap: np.ndarray
    transfers: int


# What each record is to the sweep of category_errors: its own true positives, its own false positives by
# error code (localisation split by whether a fix makes it the true positive), the transfers into it, its
# own false positives without a code; records that count nowhere (ignored, beyond maxDets) are _DROPPED.
_G_TP, _G_LOC_BEST, _G_TRANSFER, _G_UNCODED = 0, 7, TRANSFER, 8
_G_COUNT = 9
_DROPPED = np.uint8(255)


def _byte(bits: np.ndarray, i: int) -> np.ndarray:
    """uint8 [N], byte ``i`` (0: lowest) of uint64 ``bits``, without a uint64 temporary."""
    bits = np.ascontiguousarray(bits, dtype=np.uint64)
    return bits.view(np.uint8).reshape(-1, 8)[:, i if np.little_endian else 7 - i]


def _sweep_positions(records: MatchRecords, group: np.ndarray, order: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The records of the sweep (``group`` not dropped): their groups (uint8 [L]) and their places
    (int64 [L]) in the list sorted by :func:`~detbatch.metrics.order.record_order`.

    ``order``: the category's accumulation order (:func:`~detbatch.metrics.order.accumulation_order`,
    ranks below maxDets), shared with the COCO reduce so that the category is sorted once: its own
    records keep that order, and the transfers (ranked beyond maxDets, so not in it; few) are sorted on
    their own and merged in by (score, image): a transfer's rank is above every own rank, so it follows
    the own records of its score and image, as ``record_order`` puts it. Without ``order`` (or with
    scores or image ids that do not pack into one uint64 key), one ``record_order`` of the list."""
    transfer = np.flatnonzero(group == _G_TRANSFER)
    score = records.score
    packable = score.dtype == np.float32 and (len(records) == 0 or (int(records.image_id.min()) >= 0 and int(records.image_id.max()) < 2**32))
    if order is None or not packable:
        rows = np.flatnonzero(group != _DROPPED)
        rows = rows[record_order(score[rows], records.image_id[rows], records.rank[rows])]
        return group[rows], np.arange(len(rows))
    own = order[group[order] != _DROPPED]
    transfer = transfer[record_order(score[transfer], records.image_id[transfer], records.rank[transfer])]

    def key(rows: np.ndarray) -> np.ndarray:
        k = descending_key(score[rows]).astype(np.uint64)
        k <<= np.uint64(32)
        k |= records.image_id[rows].astype(np.uint64)
        return k

    inserted = np.searchsorted(key(own), key(transfer), side="right")  # own records before each transfer
    own_at = np.arange(len(own)) + np.searchsorted(inserted, np.arange(len(own)), side="right")
    return np.concatenate((group[own], group[transfer])), np.concatenate((own_at, inserted + np.arange(len(transfer))))


def category_errors(records: MatchRecords, num_gt: np.ndarray | int, order: np.ndarray | None = None) -> CategoryErrors:
    """:class:`CategoryErrors` of one category's :func:`error_records` rows (any order); ``num_gt``: its
    counted ground truth (an int, or the count row whose first entry is area ``all``); ``order``: their
    accumulation order when the caller has it (the COCO reduce's), else sorted here.

    Every AP50 from positions in one sorted list: a fix removes some records from the list and turns
    some into true positives, so each true positive's place in the fixed list is its place in the full
    list less the removed records above it (a binary search in each removed group's sorted positions):
    no per-record mask or copy per fix."""
    n_gt = int(np.asarray(num_gt).reshape(-1)[0])
    code = _byte(records.tp, 7)
    kind = code & np.uint8(7)
    counted = (records.rank < MAX_DETECTIONS[-1]) & ((_byte(records.ignored, 0) & np.uint8(1)) == 0) & (kind != TRANSFER)
    is_tp = (_byte(records.tp, 0) & np.uint8(1)) != 0
    group = np.where(kind == TRANSFER, np.uint8(_G_TRANSFER), _DROPPED)
    group[counted] = kind[counted]
    group[counted & (kind == 0)] = _G_UNCODED
    group[counted & is_tp] = _G_TP
    group[counted & (kind == LOC) & ((code & np.uint8(BEST)) != 0)] = _G_LOC_BEST
    del code, kind, counted, is_tp
    group, place = _sweep_positions(records, group, order)
    # The sorted positions of each group's records: one O(N) stable sort of a byte, int32 where they fit.
    by_group = np.argsort(group, kind="stable")
    place = place[by_group].astype(np.int32 if len(place) < 2**31 else np.int64)
    bounds = np.concatenate(([0], np.cumsum(np.bincount(group, minlength=256)[:_G_COUNT])))
    at = [place[bounds[g] : bounds[g + 1]] for g in range(_G_COUNT)]  # each increasing: a group is own records or transfers
    del group, by_group, place
    n = [len(a) for a in at]
    num_tp = n[_G_TP]
    num_own = sum(n) - n[_G_TRANSFER]
    fixed_to_tp = n[_G_LOC_BEST] + n[_G_TRANSFER]
    missed = n_gt - num_tp - fixed_to_tp

    def ap(positives: tuple[int, ...], removed: tuple[int, ...], n_truth: int = n_gt) -> float:
        """AP50 of the sorted list less the groups ``removed``, with the groups ``positives`` true positives."""
        pos = at[positives[0]] if len(positives) == 1 else np.sort(np.concatenate([at[g] for g in positives]))
        place = pos.astype(np.int64) + 1
        for g in removed:
            if n[g]:
                place -= np.searchsorted(at[g], pos)
        kept = num_own + n[_G_TRANSFER] - sum(n[g] for g in removed)
        return _ap50_at(place, kept, n_truth)

    if n_gt == 0:  # outside COCO's mean, with or without fixes
        aps = np.full(1 + len(ERROR_TYPES) + len(SPECIAL_TYPES), np.nan)
    else:
        tr = (_G_TRANSFER,)
        aps = np.array([
            ap((_G_TP,), tr),
            ap((_G_TP, _G_TRANSFER), (CLS,)),  # classification: its errors gone, the transfers in
            ap((_G_TP, _G_LOC_BEST), (LOC, _G_TRANSFER)),  # localisation
            *(ap((_G_TP,), (k, _G_TRANSFER)) for k in (BOTH, DUPE, BKG)),
            ap((_G_TP,), tr, n_gt - missed),  # missed
            _ap50_at(np.arange(1, num_tp + 1), num_own, n_gt),  # false positives: every true positive first
            ap((_G_TP,), tr, num_tp),  # false negatives
        ])  # fmt: skip
    counts = np.array([n[CLS], n[LOC] + n[_G_LOC_BEST], n[BOTH], n[DUPE], n[BKG], missed], dtype=np.int64)
    return CategoryErrors(n_gt, counts, aps, n[_G_TRANSFER])


def accumulate_errors(records: MatchRecords, num_gt: np.ndarray) -> tuple[CategoryErrors]:
    """:func:`category_errors` as a metric's accumulation of one category (a 1-tuple of its parts)."""
    return (category_errors(records, num_gt),)


@dataclass(frozen=True)
class ErrorBreakdown:
    """The error breakdown of an evaluation.

    Attributes:
        category_ids: int64 [K].
        per_category: [K] :class:`CategoryErrors`, in ``category_ids`` order.
    """

    category_ids: np.ndarray
    per_category: list[CategoryErrors]

    def ap50(self) -> float:
        """The mean AP50 of the categories with ground truth: COCO's AP50."""
        return mean_valid(np.array([c.ap[0] if c.num_gt else -1.0 for c in self.per_category]))

    def dap(self) -> dict[str, float]:
        """Overall dAP per type (:data:`ERROR_TYPES`, then :data:`SPECIAL_TYPES`): the mean AP50 with that
        type fixed minus the mean AP50, over the categories with ground truth (one leaves the mean where
        the fix leaves it without AP). The six main ones floored at 0, as tidecv does."""
        base = self.ap50()
        aps = np.array([c.ap for c in self.per_category if c.num_gt]).reshape(-1, 1 + len(ERROR_TYPES) + len(SPECIAL_TYPES))
        out = {}
        for i, name in enumerate(ERROR_TYPES + SPECIAL_TYPES):
            column = aps[:, 1 + i]
            fixed = float(np.mean(column[~np.isnan(column)])) if (~np.isnan(column)).any() else base
            out[name] = max(fixed - base, 0.0) if name in ERROR_TYPES else fixed - base
        return out

    def counts(self) -> dict[str, int]:
        total = np.sum([c.counts for c in self.per_category], axis=0) if self.per_category else np.zeros(len(ERROR_TYPES), np.int64)
        return {name: int(v) for name, v in zip(ERROR_TYPES, total)}


def errors_dict(breakdown: ErrorBreakdown, names: dict[int, str]) -> dict[str, Any]:
    """metrics.json ``errors`` (docs/evaluate.md, "Error breakdown"); ``names``: category id -> key."""
    per_category = {}
    for k, c in zip(breakdown.category_ids, breakdown.per_category):
        entry: dict[str, Any] = {"category_id": int(k), "AP50": None if not c.num_gt else float(c.ap[0])}
        entry["dAP"] = {
            name: (None if not c.num_gt or np.isnan(c.ap[1 + i]) else float(c.ap[1 + i] - c.ap[0]))
            for i, name in enumerate(ERROR_TYPES + SPECIAL_TYPES)
        }
        entry["counts"] = {name: int(v) for name, v in zip(ERROR_TYPES, c.counts)}
        per_category[names[int(k)]] = entry
    return {
        "iou": POSITIVE_IOU,
        "background_iou": BACKGROUND_IOU,
        "AP50": breakdown.ap50(),
        "dAP": breakdown.dap(),
        "counts": breakdown.counts(),
        "per_category": per_category,
    }


def evaluate_errors(gt: GroundTruth, m: Matching) -> ErrorBreakdown:
    """The breakdown of one whole evaluation in this process (tests, training validation)."""
    from detbatch.metrics.coco import count_ground_truth
    from detbatch.metrics.grouping import every_category, accumulate_by_category

    counts = count_ground_truth(gt)
    records = error_records(gt, m)
    parts = accumulate_by_category(records, gt.category_ids, counts, accumulate_errors)
    rows = every_category(gt.category_ids, counts, parts, accumulate_errors)
    return ErrorBreakdown(gt.category_ids, [r[0] for r in rows])
