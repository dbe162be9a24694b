"""The columns that both evaluations take and give: ground truth, detections, match records.

COCO (:mod:`detbatch.metrics.coco`) and Pascal VOC (:mod:`detbatch.metrics.voc`) read the same
:class:`GroundTruth` and :class:`Detections`, drop the same detections (:func:`evaluated_detections`), and
write the same :class:`MatchRecords` for their reduce. Every column is a numpy array, one row per
annotation, box or record: no Python object per row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


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

        Annotations evaluation cannot use are dropped (:func:`usable_ground_truth`; pycocotools, too, leaves
        out those of images or categories not listed). A missing ``iscrowd`` reads as 0, a missing ``area``
        as ``w * h`` (pycocotools would raise). Raises ``KeyError`` for an image or category without ``id``
        or an annotation without ``bbox``.
        """
        gt, dropped = ground_truth_from_coco(dataset)
        if any(dropped.values()):
            logger.warning("ground truth: annotations dropped: %s", dropped)
        return gt

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


# Why an annotation is left out of evaluation, in the order tried: each dropped annotation counts once,
# under the first that applies. Zero-area boxes are not among them: pycocotools keeps them (they match no
# detection, IoU 0, and count as missed), and so does detbatch.
ANNOTATION_DROPS = (
    "no_image_id", "unknown_image_id", "no_category_id", "unknown_category_id", "non_finite_bbox", "negative_size",
)  # fmt: skip


def usable_ground_truth(
    *, image_ids: np.ndarray, category_ids: np.ndarray, image_id: np.ndarray, has_image_id: np.ndarray,
    category_id: np.ndarray, has_category_id: np.ndarray, boxes: np.ndarray, area: np.ndarray,
    iscrowd: np.ndarray, difficult: np.ndarray,
) -> tuple[GroundTruth, dict[str, int]]:  # fmt: skip
    """The :class:`GroundTruth` of the annotations evaluation can use, and how many were dropped, by reason.

    Columns as :class:`GroundTruth`'s, one row per annotation of the file; ``has_image_id``,
    ``has_category_id``: bool [G], False where the annotation has none (``image_id``/``category_id`` there
    are ignored). Dropped, counted under :data:`ANNOTATION_DROPS`: no ``image_id``; an ``image_id`` not in
    ``image_ids`` (pycocotools leaves those out); the same two for the category; a NaN or infinite ``bbox``
    number; a negative width or height.
    """
    image_id, category_id = _as(image_id, np.int64), _as(category_id, np.int64)
    boxes = _as(boxes, np.float64, (-1, 4))
    has_image_id, has_category_id = _as(has_image_id, bool), _as(has_category_id, bool)
    unknown_image = has_image_id & ~np.isin(image_id, image_ids)
    unknown_category = has_category_id & ~np.isin(category_id, category_ids)
    finite = np.isfinite(boxes).all(axis=1)
    negative = finite & ((boxes[:, 2] < 0) | (boxes[:, 3] < 0))
    dropped = np.zeros(len(image_id), dtype=bool)
    counts = {}
    for reason, rows in zip(ANNOTATION_DROPS, (~has_image_id, unknown_image, ~has_category_id, unknown_category, ~finite, negative)):
        counts[reason] = int((rows & ~dropped).sum())
        dropped |= rows
    keep = ~dropped
    gt = GroundTruth(
        image_id=image_id[keep], category_id=category_id[keep], boxes=boxes[keep], area=np.asarray(area)[keep],
        iscrowd=np.asarray(iscrowd)[keep], image_ids=image_ids, category_ids=category_ids,
        difficult=np.asarray(difficult)[keep],
    )  # fmt: skip
    return gt, counts


def ground_truth_from_coco(dataset: dict[str, Any]) -> tuple[GroundTruth, dict[str, int]]:
    """:meth:`GroundTruth.from_coco`, and the counts of :func:`usable_ground_truth`."""
    anns = dataset.get("annotations", [])
    boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    area = np.array([a.get("area", np.nan) for a in anns], dtype=np.float64)
    no_area = np.isnan(area)
    area[no_area] = boxes[no_area, 2] * boxes[no_area, 3]
    image_id, has_image_id = _optional_ids([a.get("image_id") for a in anns])
    category_id, has_category_id = _optional_ids([a.get("category_id") for a in anns])
    return usable_ground_truth(
        image_ids=np.array([im["id"] for im in dataset.get("images", [])], dtype=np.int64),
        category_ids=np.array([c["id"] for c in dataset.get("categories", [])], dtype=np.int64),
        image_id=image_id, has_image_id=has_image_id, category_id=category_id, has_category_id=has_category_id,
        boxes=boxes, area=area, iscrowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
        difficult=np.array([bool(a.get("difficult", 0)) for a in anns], dtype=bool),
    )  # fmt: skip


def _optional_ids(values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """int64 ids (0 where None) and where they are given."""
    has = np.array([v is not None for v in values], dtype=bool)
    return np.array([0 if v is None else v for v in values], dtype=np.int64), has


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
            COCO: rows with ``rank >= 100`` are only counted.
        score: float [N].
        tp: uint64 [N], true positive as bits. COCO: bit ``a * 10 + t`` set where the detection is a true
            positive at IoU threshold ``t`` in area range ``a`` (``AREA_LABELS``, ``IOU_THRESHOLDS``).
            VOC: bit 0.
        ignored: uint64 [N], same bits: ignored (COCO: matched a crowd or out-of-range ground truth, or
            unmatched and itself outside the area range; VOC: matched a difficult ground truth). Neither
            bit: a false positive.
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
