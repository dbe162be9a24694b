"""Detection metrics as pure numpy: COCO mAP equal to pycocotools, Pascal VOC AP.

The maths takes arrays and returns arrays; ``detbatch.evaluate`` moves batches through Ray around it, and
training validation calls it directly.
"""

from detbatch.metrics.coco import (
    AREA_LABELS,
    AREA_RANGES,
    IOU_THRESHOLDS,
    MAX_DETECTIONS,
    RECALL_THRESHOLDS,
    Detections,
    GroundTruth,
    MatchRecords,
    count_ground_truth,
    evaluated_detections,
    match_images,
)
from detbatch.metrics.coco_reduce import (
    STAT_KEYS,
    CocoResult,
    accumulate_category,
    combine,
    evaluate_coco,
    reduce,
    summarize,
)

__all__ = [
    "AREA_LABELS",
    "AREA_RANGES",
    "IOU_THRESHOLDS",
    "MAX_DETECTIONS",
    "RECALL_THRESHOLDS",
    "STAT_KEYS",
    "CocoResult",
    "Detections",
    "GroundTruth",
    "MatchRecords",
    "accumulate_category",
    "combine",
    "count_ground_truth",
    "evaluate_coco",
    "evaluated_detections",
    "match_images",
    "reduce",
    "summarize",
]
