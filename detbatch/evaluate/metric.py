"""The chosen metric's steps over arrays (:mod:`detbatch.metrics`), shared by the evaluation in this
process and the stages on Ray: match whole images, count ground truth, accumulate whole categories
(:func:`~detbatch.metrics.grouping.accumulate_by_category` with ``Metric.accumulate``), combine them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from detbatch.evaluate.config import EvaluateConfig
from detbatch.metrics import coco, coco_reduce, thresholds, tide, voc
from detbatch.metrics.coco import Detections, GroundTruth, MatchRecords, evaluated_detections
from detbatch.metrics.confusion import confusion_matrix
from detbatch.metrics.order import accumulation_order
from detbatch.metrics.slices import Slices, accumulate_slices, slice_stats


@dataclass(frozen=True)
class Metric:
    """The steps; ``confusion``, when set, is the map of the confusion matrix, run per set of whole images
    once the reduce has given the thresholds: (ground truth, detections, combined result) -> int64 [K+1, K+1]."""

    match: Callable[[GroundTruth, Detections], MatchRecords]
    count: Callable[[GroundTruth], np.ndarray]
    accumulate: Callable[[MatchRecords, np.ndarray], tuple[Any, ...]]
    combine: Callable[[np.ndarray, np.ndarray, dict[int, tuple[Any, ...]]], Any]
    confusion: Callable[[GroundTruth, Detections, Any], np.ndarray] | None = None


def _confusion(config: EvaluateConfig) -> Callable[[GroundTruth, Detections, Any], np.ndarray]:
    given, iou = config.confusion_score_threshold, config.confusion_iou

    def confusion(gt: GroundTruth, dt: Detections, result: Any) -> np.ndarray:
        return confusion_matrix(gt, dt, thresholds.confusion_score_thresholds(result.category_ids, result.thresholds, given), iou)

    return confusion


def _with_errors(metric: Metric) -> Metric:
    """``metric`` (COCO) with the TIDE error breakdown in the same map and reduce: the match step codes each
    false positive (and adds transfer records, inert for the other reduces), each category's reduce sweeps
    its records once more (docs/evaluate.md, "Error breakdown")."""
    inner_accumulate, inner_combine = metric.accumulate, metric.combine

    def match(gt: GroundTruth, dt: Detections) -> MatchRecords:
        return tide.error_records(gt, coco.matching(gt, dt))

    def accumulate(records: MatchRecords, counts: np.ndarray) -> tuple[Any, ...]:
        # One sort of the category for all its sweeps (the inner accumulation takes ``order``).
        order = accumulation_order(records, max_rank=coco.MAX_DETECTIONS[-1])
        return (*inner_accumulate(records, counts, order=order), tide.category_errors(records, counts, order=order))

    def combine(category_ids: np.ndarray, gt_counts: np.ndarray, parts: dict[int, tuple[Any, ...]]) -> Any:
        # The last entry of a part counts its records: the transfers into a category are none of its detections.
        result = inner_combine(category_ids, gt_counts, {c: (*v[:-2], v[-1] - v[-2].transfers) for c, v in parts.items()})
        per = [parts[int(c)][-2] if int(c) in parts else tide.category_errors(MatchRecords.empty(), gt_counts[k])
               for k, c in enumerate(category_ids)]  # fmt: skip
        return replace(result, errors=tide.ErrorBreakdown(np.asarray(category_ids, dtype=np.int64), per))

    return replace(metric, match=match, accumulate=accumulate, combine=combine)


def _with_slices(metric: Metric, slices: Slices) -> Metric:
    """``metric`` with AP/AP50/AR100 per slice in the same reduce: the slices' ground-truth counts ride
    along each category's count row, their accumulations along its parts (docs/evaluate.md, "Slices")."""
    inner_accumulate, inner_combine = metric.accumulate, metric.combine

    def accumulate(records: MatchRecords, counts: np.ndarray) -> tuple[Any, ...]:
        return (*inner_accumulate(records, counts), accumulate_slices(slices, records, counts))

    def combine(category_ids: np.ndarray, gt_counts: np.ndarray, parts: dict[int, tuple[Any, ...]]) -> Any:
        result = inner_combine(category_ids, gt_counts, {c: (*v[:-2], v[-1]) for c, v in parts.items()})
        empty = MatchRecords.empty()
        per = [parts[int(c)][-2] if int(c) in parts else accumulate_slices(slices, empty, gt_counts[k]) for k, c in enumerate(category_ids)]
        return replace(result, slices=slice_stats(slices, per))

    return replace(metric, count=slices.ground_truth_counts, accumulate=accumulate, combine=combine)


def metric_for(config: EvaluateConfig, slices: Slices | None = None) -> Metric:
    """The metric of ``config``; with ``slices`` (COCO only), also the slices' stats."""
    coco_metric = (
        _with_errors(Metric(coco.match_images, coco.count_ground_truth, thresholds.accumulate_with_thresholds,
                            thresholds.combine_with_thresholds, _confusion(config)))
        if config.diagnostics
        else Metric(coco.match_images, coco.count_ground_truth, coco_reduce.accumulate_category, coco_reduce.combine)
    )  # fmt: skip
    metrics = {
        "coco": coco_metric,
        "voc": Metric(
            lambda gt, dt: voc.match_images_voc(gt, dt, config.voc_plus_one),
            voc.count_ground_truth_voc,
            voc.accumulate_category_voc,
            voc.combine_voc,
        ),
    }
    if slices is not None and config.metric == "coco":
        return _with_slices(metrics["coco"], slices)
    return metrics[config.metric]


def detection_counts(gt: GroundTruth, dt: Detections, unpaired: int) -> dict[str, int]:
    """The detection counts of metrics.json ``pairing`` for paired ``dt`` and ``unpaired`` dropped ones."""
    _, dropped = evaluated_detections(gt, dt)
    return {
        "detections": len(dt) + unpaired,
        "detections_paired": len(dt),
        "detections_unpaired": unpaired,
        "detections_unknown_category": dropped["unknown_category"],
        "detections_non_finite": dropped["non_finite"],
        "detections_evaluated": len(dt) - dropped["unknown_category"] - dropped["non_finite"],
    }

