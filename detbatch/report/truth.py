"""Ground truth for the report: pairing run images with it, and TP / FP / FN by greedy matching.

A detection is a true positive when it takes a ground-truth box of its category at IoU ≥ 0.5, detections
taken in descending score order, each ground truth at most once (the VOC / COCO rule at one IoU, without
crowd or area handling: crowd boxes are left out of the report). Because the matching is greedy by score,
the detections above any threshold match exactly as they do in the whole list: a detection's TP / FP is
the same at every slider position, and a ground truth is missed at threshold ``t`` when the detection that
took it scores below ``t`` (or none did). So one matching serves the page's slider.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detbatch.metrics.boxes import pairwise_iou, xyxy_to_xywh
from detbatch.metrics.pairing import pair_file_names
from detbatch.report.data import RunParts, fragments

# The IoU at which a detection counts as finding an object: PASCAL VOC's and COCO's AP50.
MATCH_IOU = 0.5
# How many images each "worst" list shows.
WORST_IMAGES = 24


def greedy_match(
    det_boxes: np.ndarray, det_category: np.ndarray, det_score: np.ndarray, gt_boxes: np.ndarray, gt_category: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Match one image's detections to its ground truth.

    Args:
        det_boxes: float [D, 4] xyxy, pixels of the original image; det_category int [D]; det_score float [D].
        gt_boxes: float [G, 4] xyxy, pixels; gt_category int [G].

    Returns:
        (tp bool [D], taken_by float64 [G]: the score of the detection that took each ground truth, NaN if none).
    """
    tp = np.zeros(len(det_boxes), dtype=bool)
    taken_by = np.full(len(gt_boxes), np.nan)
    if not len(det_boxes) or not len(gt_boxes):
        return tp, taken_by
    iou = pairwise_iou(xyxy_to_xywh(det_boxes), xyxy_to_xywh(gt_boxes))
    iou[np.asarray(det_category)[:, None] != np.asarray(gt_category)[None, :]] = -1.0
    for d in np.argsort(-np.asarray(det_score, dtype=np.float64), kind="stable"):
        candidates = np.where(np.isnan(taken_by), iou[d], -1.0)
        g = int(np.argmax(candidates))
        if candidates[g] >= MATCH_IOU:
            tp[d] = True
            taken_by[g] = float(det_score[d])
    return tp, taken_by


@dataclass(frozen=True)
class Truth:
    """Ground truth by run image: ``boxes`` maps a run image id to (float [G, 4] xyxy, int [G] category ids);
    ``parts`` the part index of each paired run image; ``worst_missed`` / ``worst_false`` the run image ids of
    the worst images with their count of missed objects / their highest false-positive score."""

    boxes: dict[int, tuple[np.ndarray, np.ndarray]]
    names: dict[int, str]
    parts: dict[int, int]
    worst_missed: list[tuple[int, int]]
    worst_false: list[tuple[int, float]]


def load_truth(run: RunParts, coco: dict[str, Any]) -> Truth:
    """Pair ``run``'s ok images with the COCO dict ``coco`` (by image id with a manifest, else by file name, as
    evaluate does), then match every paired image to find the worst ones."""
    ids, uris, parts = [], [], []
    for part, fragment in enumerate(fragments(run, run.images)):
        t = fragment.to_table(columns=["image_id", "uri"], filter=pc.field("status") == "ok")
        ids.append(t["image_id"].to_numpy())
        uris += t["uri"].to_pylist()
        parts.append(np.full(t.num_rows, part, np.int64))
    run_ids = np.concatenate(ids) if ids else np.empty(0, np.int64)
    part_of_run = np.concatenate(parts) if parts else np.empty(0, np.int64)
    gt_images = coco.get("images", [])
    info = run.info or {}
    run_input = info.get("input", {})
    if run_input.get("manifest"):
        known = {int(im["id"]) for im in gt_images}
        gt_of_run = {int(r): int(r) for r in run_ids if int(r) in known}
    else:
        pairing = pair_file_names(uris, run_input.get("root") or run_input.get("uri"),
                                  [im["file_name"] for im in gt_images], run_input.get("kind"))
        gt_of_run = {int(r): int(gt_images[g]["id"]) for r, g in zip(run_ids, pairing.gt_index) if g >= 0}
    names = {int(c["id"]): str(c["name"]) for c in coco.get("categories", [])}
    by_gt: dict[int, list[dict[str, Any]]] = {}
    for a in coco.get("annotations", []):  # crowd and unknown categories left out, as evaluate drops the latter
        if not a.get("iscrowd") and int(a["category_id"]) in names:
            by_gt.setdefault(int(a["image_id"]), []).append(a)
    boxes = {}
    for r, g in gt_of_run.items():
        anns = by_gt.get(g, [])
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        boxes[r] = (xyxy, np.array([int(a["category_id"]) for a in anns], dtype=np.int64))
    part_map = {int(r): int(p) for r, p in zip(run_ids, part_of_run) if int(r) in gt_of_run}
    missed, false = _worst(run, boxes, part_map)
    return Truth(boxes, names, part_map, missed, false)


def _worst(run: RunParts, boxes: dict[int, tuple[np.ndarray, np.ndarray]],
           part_map: dict[int, int]) -> tuple[list[tuple[int, int]], list[tuple[int, float]]]:
    """The images with the most missed objects and with the highest-scoring false positives (all detections)."""
    detections = match_table(run, sorted(set(part_map.values())), list(boxes), boxes)
    missed = {r: int(np.isnan(truth_scores).sum()) for r, truth_scores in detections.missed.items()}
    false: dict[int, float] = {}
    for r, s, tp in zip(detections.image_id, detections.score, detections.tp):
        if not tp:
            false[int(r)] = max(false.get(int(r), -1.0), float(s))
    worst_missed = sorted(((r, n) for r, n in missed.items() if n), key=lambda x: (-x[1], x[0]))[:WORST_IMAGES]
    worst_false = sorted(false.items(), key=lambda x: (-x[1], x[0]))[:WORST_IMAGES]
    return worst_missed, worst_false


@dataclass(frozen=True)
class Matched:
    """Detections of some images with their TP flag, and each image's ground truth ``taken_by`` scores."""

    table: pa.Table
    tp: np.ndarray
    missed: dict[int, np.ndarray]

    @property
    def image_id(self) -> np.ndarray:
        return self.table["image_id"].to_numpy()

    @property
    def score(self) -> np.ndarray:
        return self.table["score"].to_numpy()


COLUMNS = ["image_id", "category_id", "category", "score", "x_min", "y_min", "x_max", "y_max"]
# The contract's types of COLUMNS (docs/detect.md), for a read that found no files.
DETECTION_COLUMNS = pa.schema([("image_id", pa.int64()), ("category_id", pa.int32()), ("category", pa.string()),
                               *((c, pa.float32()) for c in ["score", *COLUMNS[4:]])])


def match_detections(table: pa.Table, boxes: dict[int, tuple[np.ndarray, np.ndarray]]) -> Matched:
    """Match the detections ``table`` (:data:`COLUMNS`) to ``boxes`` (run image id -> ground truth), image by
    image; images of ``boxes`` without detections have all their objects missed."""
    table = table.sort_by([("image_id", "ascending")])
    ids = table["image_id"].to_numpy()
    corners = np.stack([table[c].to_numpy() for c in COLUMNS[4:]], axis=1) if len(table) else np.empty((0, 4))
    category = table["category_id"].to_numpy()
    score = table["score"].to_numpy()
    tp = np.zeros(len(table), dtype=bool)
    missed = {r: np.full(len(b[0]), np.nan) for r, b in boxes.items()}
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.empty(0, np.int64)
    for begin, end in zip(starts, [*starts[1:], len(ids)]):
        r = int(ids[begin])
        if r in boxes:
            gt_boxes, gt_category = boxes[r]
            tp[begin:end], missed[r] = greedy_match(corners[begin:end], category[begin:end], score[begin:end],
                                                    gt_boxes, gt_category)
    return Matched(table, tp, missed)


def match_table(run: RunParts, parts: list[int], image_ids: list[int],
                boxes: dict[int, tuple[np.ndarray, np.ndarray]]) -> Matched:
    """Read the detections of ``image_ids`` from the ``parts`` that hold them, and match them."""
    ids = pa.array(image_ids, pa.int64())
    tables = [f.to_table(columns=COLUMNS, filter=pc.field("image_id").isin(ids))
              for f in fragments(run, [run.detections[p] for p in parts])]
    table = pa.concat_tables(tables) if tables else DETECTION_COLUMNS.empty_table()
    return match_detections(table, boxes)
