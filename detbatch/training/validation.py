"""Validation mAP during training, with the exact COCO evaluator of ``detbatch evaluate``.

Each worker matches its share of the validation images (:func:`detbatch.metrics.match_images`, whole
images, so any split gives the same records) and counts their ground truth; rank 0 reduces the records
of all workers (:func:`detbatch.metrics.reduce`). The numbers equal pycocotools on the same images,
with the cleaned ground truth (invalid boxes dropped, see :mod:`detbatch.training.samples`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from detbatch.metrics import (
    Detections,
    GroundTruth,
    MatchRecords,
    count_ground_truth,
    match_images,
    reduce,
)
from detbatch.training.samples import annotations_of, pixels_to_tensor

if TYPE_CHECKING:
    import torch


@dataclass
class ValidationPart:
    """One worker's share: match records, ground-truth counts [K, A], images evaluated and skipped."""

    records: MatchRecords
    gt_counts: np.ndarray
    images: int
    skipped: int


def ground_truth_of(batch: dict[str, np.ndarray], rows: list[int], category_ids: np.ndarray) -> GroundTruth:
    """The evaluator's ground truth for ``rows`` of a decoded batch (images listed even when empty)."""
    parts = [annotations_of(batch, i) for i in rows]
    image_ids = [np.full(len(p.category_id), int(batch["image_id"][i]), dtype=np.int64) for p, i in zip(parts, rows)]
    return GroundTruth(
        image_id=np.concatenate(image_ids) if parts else np.zeros(0, np.int64),
        category_id=np.concatenate([p.category_id for p in parts]) if parts else np.zeros(0, np.int64),
        boxes=np.concatenate([p.bbox for p in parts]).reshape(-1, 4) if parts else np.zeros((0, 4)),
        area=np.concatenate([p.area for p in parts]) if parts else np.zeros(0),
        iscrowd=np.concatenate([p.iscrowd for p in parts]) if parts else np.zeros(0, bool),
        image_ids=np.unique(np.asarray([int(batch["image_id"][i]) for i in rows], dtype=np.int64)),
        category_ids=category_ids,
    )


def detections_of(outputs: list[dict[str, "torch.Tensor"]], image_ids: list[int], label_to_category: np.ndarray) -> Detections:
    """torchvision outputs (``boxes`` xyxy pixels, ``labels``, ``scores``) -> :class:`Detections`."""
    boxes = [o["boxes"].float().cpu().numpy().reshape(-1, 4) for o in outputs]
    labels = [o["labels"].cpu().numpy() for o in outputs]
    return Detections(
        image_id=np.concatenate([np.full(len(b), i, np.int64) for b, i in zip(boxes, image_ids)]) if outputs else [],
        category_id=label_to_category[np.concatenate(labels)] if outputs else [],
        score=np.concatenate([o["scores"].float().cpu().numpy() for o in outputs]) if outputs else np.zeros(0, np.float32),
        boxes=np.concatenate(boxes) if outputs else np.zeros((0, 4), np.float32),
    )


def validate_shard(
    model: "torch.nn.Module",
    batches: Any,
    category_ids: np.ndarray,
    rank: int,
    world_size: int,
    batch_size: int,
    device: "torch.device",
    amp: bool,
) -> ValidationPart:
    """Run ``model`` (unwrapped, eval mode) over this worker's validation images and match them.

    ``batches``: decoded rows in numpy batches, every image of the split; this worker takes those with
    ``image_id % world_size == rank``.
    """
    import torch

    label_to_category = np.concatenate([[-1], category_ids]).astype(np.int64)
    records, counts, images, skipped = [], np.zeros((len(category_ids), 4), np.int64), 0, 0
    for batch in batches:
        mine = [i for i in range(len(batch["image_id"])) if int(batch["image_id"][i]) % world_size == rank]
        ok = [i for i in mine if batch["error"][i] is None]
        skipped += len(mine) - len(ok)
        for start in range(0, len(ok), batch_size):
            rows = ok[start : start + batch_size]
            tensors = [pixels_to_tensor(batch["pixels"][i], int(batch["height"][i]), int(batch["width"][i])).to(device) for i in rows]
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                outputs = model(tensors)
            gt = ground_truth_of(batch, rows, category_ids)
            dt = detections_of(outputs, [int(batch["image_id"][i]) for i in rows], label_to_category)
            records.append(match_images(gt, dt))
            counts += count_ground_truth(gt)
            images += len(rows)
    return ValidationPart(MatchRecords.concat(records), counts, images, skipped)


def reduce_parts(parts: list[ValidationPart], category_ids: np.ndarray) -> dict[str, float]:
    """COCO stats of all workers' parts: ``val_AP``, ``val_AP50``, ... (``-1`` without ground truth)."""
    records = MatchRecords.concat([p.records for p in parts])
    counts = np.sum([p.gt_counts for p in parts], axis=0)
    result = reduce(records, category_ids, counts)
    stats = {f"val_{k}": v for k, v in result.stats_dict().items() if k in ("AP", "AP50", "AP75", "AR100")}
    stats["val_images"] = sum(p.images for p in parts)
    stats["val_skipped_images"] = sum(p.skipped for p in parts)
    return stats
