"""Detection metrics as pure numpy: COCO mAP equal to pycocotools, Pascal VOC AP.

The maths takes arrays and returns arrays; ``detbatch.evaluate`` moves batches through Ray around it, and
training validation calls it directly. The modules, in the order an evaluation runs::

    coco_json    a COCO instances file -> GroundTruth columns
    pairing      run images <-> ground-truth file names
    columns      GroundTruth and Detections in, MatchRecords out of the map
    boxes        box conversion and IoU, as pycocotools
    order        the tie orders of the map and of the reduce
    grouping     what both metrics share: detections by (image, category), records by category
    coco         the map, as COCOeval.evaluateImg: match_images
    coco_reduce  the reduce, as COCOeval.accumulate/summarize: CocoResult
    thresholds   P/R/F1 by score threshold, F1-optimal thresholds: a sweep in the COCO reduce
    confusion    the confusion matrix with a background class, a map over images
    voc          Pascal VOC AP, map and reduce
    report       summary lines, report.md, precision/recall curves
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
