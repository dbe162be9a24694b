"""One training sample at a time: clean its boxes, augment it, collate a batch. Pure numpy/torch.

Coordinates: COCO ``bbox`` is ``[x, y, w, h]`` in pixels of the stored image; model targets are
``boxes: float32 [N, 4] xyxy`` in pixels of the (augmented) image tensor, ``labels: int64 [N]`` with
label ``i >= 1`` the ``i``-th category in ascending id order (:class:`detbatch.models.Categories`).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

# A box may overhang the image by this much (labelling tools round outwards) and is then clipped;
# one that overhangs more, or has no area, is an invalid label and is dropped (and counted).
BOX_TOLERANCE_PX = 1.0
# After scale jitter crops an image, a box keeps its object only if at least this fraction of it is
# still inside: a sliver of a shape is not that shape.
MIN_VISIBLE_FRACTION = 0.5


@dataclass(frozen=True)
class CleanAnnotations:
    """The valid annotations of one image.

    Attributes:
        bbox: float64 [N, 4] COCO xywh, clipped to the image.
        category_id: int64 [N].
        area: float64 [N], the annotation's ``area`` (``w * h`` when absent).
        iscrowd: bool [N].
        num_invalid: annotations dropped: no or non-finite box, zero or negative size, outside the image
            by more than :data:`BOX_TOLERANCE_PX`, or a category not in the dataset's categories.
    """

    bbox: np.ndarray
    category_id: np.ndarray
    area: np.ndarray
    iscrowd: np.ndarray
    num_invalid: int


def clean_annotations(
    annotations: list[dict[str, Any]], width: int, height: int, category_ids: np.ndarray
) -> CleanAnnotations:
    """Keep the annotations whose box is a real box inside a ``width`` x ``height`` image."""
    n = len(annotations)
    bbox = np.full((n, 4), np.nan)
    for i, a in enumerate(annotations):
        b = a.get("bbox")
        if isinstance(b, (list, tuple)) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b):
            bbox[i] = b
    category_id = np.array([int(a.get("category_id", -1)) for a in annotations], dtype=np.int64)
    x, y, w, h = bbox.T if n else np.zeros((4, 0))
    with np.errstate(invalid="ignore"):
        valid = (
            np.isfinite(bbox).all(axis=1)
            & (w > 0)
            & (h > 0)
            & (x >= -BOX_TOLERANCE_PX)
            & (y >= -BOX_TOLERANCE_PX)
            & (x + w <= width + BOX_TOLERANCE_PX)
            & (y + h <= height + BOX_TOLERANCE_PX)
            & np.isin(category_id, category_ids)
        )
    kept = bbox[valid]
    x0 = np.clip(kept[:, 0], 0, width)
    y0 = np.clip(kept[:, 1], 0, height)
    x1 = np.clip(kept[:, 0] + kept[:, 2], 0, width)
    y1 = np.clip(kept[:, 1] + kept[:, 3], 0, height)
    area = np.array([float(a.get("area", np.nan)) for a in annotations], dtype=np.float64)[valid]
    clipped = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)
    area = np.where(np.isfinite(area), area, clipped[:, 2] * clipped[:, 3])
    iscrowd = np.array([bool(a.get("iscrowd", 0)) for a in annotations], dtype=bool)[valid]
    return CleanAnnotations(clipped, category_id[valid], area, iscrowd, int(n - valid.sum()))


def parse_annotations(text: str | None) -> list[dict[str, Any]]:
    """A row's ``annotations`` column (JSON list of COCO annotation dicts) as a list."""
    if not text:
        return []
    value = json.loads(text)
    return value if isinstance(value, list) else []


def training_target(clean: CleanAnnotations, category_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes float32 [N, 4] xyxy, labels int64 [N])`` of the non-crowd annotations.

    ``category_ids``: int64 [K] sorted; category ``category_ids[i]`` is label ``i + 1``.
    """
    keep = ~clean.iscrowd
    b = clean.bbox[keep]
    boxes = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1).astype(np.float32).reshape(-1, 4)
    labels = (np.searchsorted(category_ids, clean.category_id[keep]) + 1).astype(np.int64)
    return boxes, labels


def augment(
    image: "torch.Tensor",
    boxes: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    hflip: float,
    scale_jitter: tuple[float, float] | None,
) -> tuple["torch.Tensor", np.ndarray, np.ndarray]:
    """Random horizontal flip, then scale jitter, of ``image`` float [3, H, W] and its xyxy ``boxes``.

    Scale jitter rescales the image by ``s`` drawn uniformly from ``scale_jitter`` and crops (``s > 1``)
    or pads with the image's mean colour (``s < 1``) back to ``H x W`` at a random offset, so objects
    change size while the image does not (a detector that resizes its input would otherwise undo it).
    Boxes are clipped to the crop; those with less than :data:`MIN_VISIBLE_FRACTION` left are dropped.
    """
    import torch.nn.functional as F

    _, height, width = image.shape
    boxes = boxes.copy()
    if hflip > 0 and rng.random() < hflip:
        image = image.flip(-1)
        boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
    if scale_jitter is None or scale_jitter[0] == scale_jitter[1] == 1.0:
        return image, boxes, labels
    s = float(rng.uniform(*scale_jitter))
    new_h, new_w = max(1, round(height * s)), max(1, round(width * s))
    if (new_h, new_w) == (height, width):
        return image, boxes, labels
    scaled = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=s < 1)[0]
    boxes = boxes * np.array([new_w / width, new_h / height] * 2, dtype=np.float32)
    # Offset of the output window in the scaled image: >= 0 crops, < 0 pads.
    oy = int(rng.integers(0, new_h - height + 1)) if new_h >= height else -int(rng.integers(0, height - new_h + 1))
    ox = int(rng.integers(0, new_w - width + 1)) if new_w >= width else -int(rng.integers(0, width - new_w + 1))
    out = image.mean(dim=(1, 2), keepdim=True).expand(3, height, width).clone()
    src_y, src_x = max(oy, 0), max(ox, 0)
    dst_y, dst_x = max(-oy, 0), max(-ox, 0)
    h = min(new_h - src_y, height - dst_y)
    w = min(new_w - src_x, width - dst_x)
    out[:, dst_y : dst_y + h, dst_x : dst_x + w] = scaled[:, src_y : src_y + h, src_x : src_x + w]
    moved = boxes - np.array([ox, oy, ox, oy], dtype=np.float32)
    clipped = np.clip(moved, 0, [width, height, width, height]).astype(np.float32)
    area = lambda b: np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)  # noqa: E731
    keep = area(clipped) >= MIN_VISIBLE_FRACTION * np.maximum(area(moved), 1e-9)
    return out, clipped[keep].reshape(-1, 4), labels[keep]


def pixels_to_tensor(pixels: bytes, height: int, width: int) -> "torch.Tensor":
    """Raw RGB bytes (uint8 H x W x 3, row-major) -> float [3, H, W] in [0, 1]."""
    import torch

    array = np.frombuffer(pixels, dtype=np.uint8).reshape(height, width, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


@dataclass
class Batch:
    """A collated batch: what torchvision detectors take, plus the rows it was made from.

    ``images``: float [3, H_i, W_i] each (sizes may differ); ``targets``: ``boxes`` float32 [N_i, 4] xyxy
    and ``labels`` int64 [N_i] each; ``skipped``: rows of the batch that were left out (undecodable).
    """

    images: list["torch.Tensor"]
    targets: list[dict[str, "torch.Tensor"]]
    image_ids: list[int]
    skipped: int
    invalid_boxes: int


class Collate:
    """``collate_fn`` for ``iter_torch_batches``: decoded rows -> an augmented :class:`Batch`.

    Runs in Ray Data's prefetch thread of the training worker, overlapping the model's step.
    """

    def __init__(
        self, category_ids: list[int], hflip: float, scale_jitter: tuple[float, float] | None, seed: tuple[int, ...]
    ):
        self.category_ids = np.asarray(sorted(category_ids), dtype=np.int64)
        self.hflip = hflip
        self.scale_jitter = tuple(scale_jitter) if scale_jitter else None
        self.seed = list(seed)
        # Batches are collated on several threads: each call draws from its own generator.
        self._calls = itertools.count()

    def __call__(self, batch: dict[str, np.ndarray]) -> Batch:
        import torch

        rng = np.random.default_rng([*self.seed, next(self._calls)])
        out = Batch([], [], [], 0, int(np.sum(batch["invalid_boxes"])) if len(batch["uri"]) else 0)
        for i in range(len(batch["uri"])):
            if batch["error"][i] is not None:
                out.skipped += 1
                continue
            image = pixels_to_tensor(batch["pixels"][i], int(batch["height"][i]), int(batch["width"][i]))
            clean = annotations_of(batch, i)
            boxes, labels = training_target(clean, self.category_ids)
            image, boxes, labels = augment(image, boxes, labels, rng, self.hflip, self.scale_jitter)
            out.images.append(image)
            out.targets.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels)})
            out.image_ids.append(int(batch["image_id"][i]))
        return out


def annotations_of(batch: dict[str, np.ndarray], i: int) -> CleanAnnotations:
    """Row ``i`` of a decoded batch's cleaned annotation columns (see ``detbatch.training.data``)."""
    bbox = np.asarray(batch["bbox"][i], dtype=np.float64).reshape(-1, 4)
    return CleanAnnotations(
        bbox=bbox,
        category_id=np.asarray(batch["category_id"][i], dtype=np.int64).reshape(-1),
        area=np.asarray(batch["area"][i], dtype=np.float64).reshape(-1),
        iscrowd=np.asarray(batch["iscrowd"][i], dtype=bool).reshape(-1),
        num_invalid=int(batch["invalid_boxes"][i]),
    )


def is_validation(image_id: int, seed: int, fraction: float) -> bool:
    """The seeded split of a set without a validation file: the same images on every run and worker."""
    import hashlib

    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}:{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < fraction

