"""AP, AP50 and AR100 per slice of the images (a value of an image column), in the COCO reduce
(docs/evaluate.md, "Slices").

Each image's match records depend on that image alone, so pycocotools run on the images of one slice
alone gives, per category, the accumulation of those images' records against those images' ground-truth
count. The reduce runs that accumulation per slice in the same task as the whole-set one: the slices'
counts ride along the category's count row (``[A + S * A]``), so every engine passes them unchanged, and
the means are taken as ``summarize`` takes them, over the same [T, R, K] layout, which makes each slice's
numbers pycocotools' exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from detbatch.metrics.coco import AREA_LABELS, MAX_DETECTIONS, NUM_AREAS, count_ground_truth
from detbatch.metrics.coco_reduce import accumulate_category
from detbatch.metrics.columns import GroundTruth, MatchRecords
from detbatch.metrics.grouping import mean_valid

SLICE_KEYS = ("AP", "AP50", "AR100")
_ALL, _M100 = AREA_LABELS.index("all"), MAX_DETECTIONS.index(100)


@dataclass(frozen=True)
class Slices:
    """The images of each slice; an image may be in several (one per sliced column) or in none.

    Attributes:
        names: ``[S]`` slice labels (``"COLUMN=VALUE"``).
        members: ``[S]`` int64 sorted arrays, the ground-truth image ids of each slice.
    """

    names: list[str]
    members: list[np.ndarray]

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", [np.unique(np.asarray(ids, dtype=np.int64)) for ids in self.members])

    def ground_truth_counts(self, gt: GroundTruth) -> np.ndarray:
        """int64 [K, A + S * A]: :func:`count_ground_truth` of the whole set, then of each slice's images."""
        parts = [count_ground_truth(gt)] + [count_ground_truth(gt.select_images(ids)) for ids in self.members]
        return np.concatenate(parts, axis=1)


def accumulate_slices(slices: Slices, records: MatchRecords, counts: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per slice, the category's precision [T, R] and recall [T] (area all, maxDets 100) over the records
    of that slice's images; ``counts``: [A + S * A] from :meth:`Slices.ground_truth_counts`."""
    out = []
    for s, ids in enumerate(slices.members):
        # ids are sorted and unique: a binary search per record, not np.isin's sort of both per category
        at = np.minimum(np.searchsorted(ids, records.image_id), max(len(ids) - 1, 0))
        inside = np.flatnonzero(ids[at] == records.image_id) if len(ids) else np.zeros(0, dtype=np.int64)
        # Only area "all" is reported: a zero count makes accumulate_category skip the other ranges.
        num_gt = np.zeros(NUM_AREAS, dtype=np.int64)
        num_gt[_ALL] = counts[NUM_AREAS * (s + 1) + _ALL]
        p, r = accumulate_category(records.take(inside), num_gt)
        out.append((p[:, :, _ALL, _M100], r[:, _ALL, _M100]))
    return out


def slice_stats(slices: Slices, per_category: list[list[tuple[np.ndarray, np.ndarray]]]) -> dict[str, dict[str, Any]]:
    """``{slice name: {"AP", "AP50", "AR100", "images"}}`` from every category's :func:`accumulate_slices`
    (in ``category_ids`` order): the means of pycocotools' ``summarize`` on that slice alone."""
    out = {}
    for s, name in enumerate(slices.names):
        precision = np.stack([c[s][0] for c in per_category], axis=2)  # [T, R, K]
        recall = np.stack([c[s][1] for c in per_category], axis=1)  # [T, K]
        out[name] = {
            "AP": mean_valid(precision),
            "AP50": mean_valid(precision[:1]),
            "AR100": mean_valid(recall),
            "images": len(slices.members[s]),
        }
    return out


def evaluate_slices(gt: GroundTruth, records: MatchRecords, slices: Slices) -> dict[str, dict[str, Any]]:
    """:func:`slice_stats` of whole-evaluation ``records`` in this process (tests, training validation)."""
    counts = slices.ground_truth_counts(gt)
    by_category = []
    k_of = np.searchsorted(gt.category_ids, records.category_id)
    for k in range(len(gt.category_ids)):
        by_category.append(accumulate_slices(slices, records.take(np.flatnonzero(k_of == k)), counts[k]))
    return slice_stats(slices, by_category)
