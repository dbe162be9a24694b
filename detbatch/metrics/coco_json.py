"""Reading a COCO instances JSON into columns, without a Python object per annotation.

A 1M-image ground truth has ~7M annotations: ``json.loads`` makes ~5 GB of dicts of them. pyarrow's JSON
reader parses the document (one JSON value, read as one row) straight into Arrow columns, with a schema
that keeps only the fields evaluation needs and skips the rest (segmentations, keypoints), in a fraction of
the time and memory. Documents it cannot read that way (a non-standard type, such as ``"iscrowd": true``)
go through ``json.loads``; both give identical arrays, and check the same things: what cannot be evaluated
(an image without an id, two images with one id) raises :class:`InvalidCocoError`; annotations that cannot
be used are dropped and counted (:func:`detbatch.metrics.columns.usable_ground_truth`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detbatch.errors import InputError
from detbatch.metrics.columns import GroundTruth, ground_truth_from_coco, usable_ground_truth

logger = logging.getLogger(__name__)

# pyarrow's reader takes the whole document as one block; its block size is a 32-bit int.
_MAX_ARROW_BYTES = 2**31 - 2


class NotCocoError(InputError):
    """The JSON is not a COCO instances document."""


class InvalidCocoError(InputError):
    """A COCO document with an entry that cannot be evaluated; the message names the entry and the fix
    (the caller adds the file)."""


@dataclass(frozen=True)
class CocoDataset:
    """What evaluation needs of a COCO instances file.

    Attributes:
        gt: the annotations as :class:`GroundTruth`.
        image_ids: int64 [I], in file order.  file_names: list[str] [I], aligned with ``image_ids``.
        category_names: category id -> name.
        annotations_dropped: reason -> number of annotations of the file left out of ``gt``
            (:data:`detbatch.metrics.columns.ANNOTATION_DROPS`).
    """

    gt: GroundTruth
    image_ids: np.ndarray
    file_names: list[str]
    category_names: dict[int, str]
    annotations_dropped: dict[str, int]

    def counts(self) -> dict[str, Any]:
        """metrics.json ``ground_truth``: images, annotations evaluated, annotations dropped by reason."""
        return {"images": len(self.image_ids), "annotations": len(self.gt), "annotations_dropped": dict(self.annotations_dropped)}


def read_coco_json(data: bytes) -> CocoDataset:
    """Parse a COCO instances document (raises :class:`NotCocoError` if it is not one, and
    :class:`InvalidCocoError` for an entry that cannot be evaluated)."""
    if len(data) <= _MAX_ARROW_BYTES:
        try:
            return read_with_arrow(data)
        except InputError:  # NotCocoError, InvalidCocoError: json.loads would find the same
            raise
        except Exception as e:  # pyarrow raises ArrowInvalid / ArrowTypeError for non-standard documents
            logger.info("pyarrow could not read the ground truth (%s); using json", e)
    return read_with_json(data)


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("images", pa.list_(pa.struct([("id", pa.int64()), ("file_name", pa.string())]))),
        ("categories", pa.list_(pa.struct([("id", pa.int64()), ("name", pa.string())]))),
        ("annotations", pa.list_(pa.struct([
            ("image_id", pa.int64()), ("category_id", pa.int64()), ("bbox", pa.list_(pa.float64())),
            ("area", pa.float64()), ("iscrowd", pa.int64()), ("difficult", pa.int64()),
        ]))),
    ])  # fmt: skip


def read_with_arrow(data: bytes) -> CocoDataset:
    """:func:`read_coco_json` with pyarrow's JSON reader only (raises pyarrow's errors for documents it
    cannot read; at most ``2**31 - 2`` bytes)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    table = pj.read_json(
        pa.BufferReader(data),
        read_options=pj.ReadOptions(block_size=len(data) + 1, use_threads=False),
        parse_options=pj.ParseOptions(explicit_schema=_schema(), unexpected_field_behavior="ignore"),
    )
    if table.num_rows != 1:
        raise ValueError("not a single JSON object")
    cols = {name: table.column(name).chunk(0) for name in ("images", "categories", "annotations")}
    missing = [name for name, col in cols.items() if col.null_count]
    if missing:
        raise NotCocoError(f"no {', '.join(repr(m) for m in missing)} list")
    images, categories, anns = (cols[n].values for n in ("images", "categories", "annotations"))
    file_names = images.field("file_name").fill_null("").to_pylist()
    category_names = [str(n) for n in categories.field("name").to_pylist()]
    image_ids, category_ids = (_arrow_ids(t.field("id")) for t in (images, categories))
    check_ids("images", *image_ids, file_names)
    check_ids("categories", *category_ids, category_names)
    bbox = anns.field("bbox")
    if bbox.null_count or len(bbox) and (pc.list_value_length(bbox).to_numpy(zero_copy_only=False) != 4).any():
        raise ValueError("an annotation without a 4-number bbox")
    boxes = bbox.values.to_numpy(zero_copy_only=False).reshape(-1, 4)
    area = anns.field("area").to_numpy(zero_copy_only=False)
    area = np.where(np.isnan(area), boxes[:, 2] * boxes[:, 3], area)
    (image_id, has_image_id), (category_id, has_category_id) = (_arrow_ids(anns.field(f)) for f in ("image_id", "category_id"))
    gt, dropped = usable_ground_truth(
        image_ids=image_ids[0], category_ids=category_ids[0], image_id=image_id, has_image_id=has_image_id,
        category_id=category_id, has_category_id=has_category_id, boxes=boxes, area=area,
        iscrowd=anns.field("iscrowd").fill_null(0).to_numpy(zero_copy_only=False) != 0,
        difficult=anns.field("difficult").fill_null(0).to_numpy(zero_copy_only=False) != 0,
    )  # fmt: skip
    return _dataset(gt, dropped, image_ids[0], file_names, dict(zip(category_ids[0].tolist(), category_names)))


def _arrow_ids(ids: Any) -> tuple[np.ndarray, np.ndarray]:
    """int64 ids (0 where null) and where they are given: ``to_numpy`` alone would make every id a float
    (rounding ids above 2**53) as soon as one is null."""
    return ids.fill_null(0).to_numpy(zero_copy_only=False), ids.is_valid().to_numpy(zero_copy_only=False)


def read_with_json(data: bytes) -> CocoDataset:
    """:func:`read_coco_json` with ``json.loads`` and :func:`~detbatch.metrics.columns.ground_truth_from_coco`:
    any size, any JSON types, a Python object per annotation."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NotCocoError(f"not JSON ({e})") from e
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(doc, dict) or not isinstance(doc.get(k), list)]
    if missing:
        raise NotCocoError(f"no {', '.join(repr(k) for k in missing)} list")
    file_names = [_text(im.get("file_name")) if isinstance(im, dict) else "" for im in doc["images"]]
    category_names = [str(c.get("name", c.get("id"))) if isinstance(c, dict) else "" for c in doc["categories"]]
    image_ids, category_ids = json_ids("images", doc["images"], file_names), json_ids("categories", doc["categories"], category_names)
    check_ids("images", *image_ids, file_names)
    check_ids("categories", *category_ids, category_names)
    try:
        gt, dropped = ground_truth_from_coco(doc)
    except (KeyError, TypeError, ValueError) as e:
        raise NotCocoError(f"an annotation without a 4-number bbox, or with an image_id or category_id that is not an integer ({e!r})") from e
    return _dataset(gt, dropped, image_ids[0], file_names, dict(zip(category_ids[0].tolist(), category_names)))


def json_ids(kind: str, entries: list[Any], labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The ``id`` of each of ``entries`` (the ``kind`` list of a parsed COCO document) as int64, 0 where
    absent, and where given. An id that is not an integer (``12.0`` is one) raises :class:`InvalidCocoError`."""
    ids, has = np.zeros(len(entries), dtype=np.int64), np.zeros(len(entries), dtype=bool)
    for i, entry in enumerate(entries):
        value = entry.get("id") if isinstance(entry, dict) else None
        if value is None:
            continue
        if isinstance(value, bool) or not (isinstance(value, int) or isinstance(value, float) and value.is_integer()):
            raise InvalidCocoError(f"{kind}[{i}] ({_label(kind, labels[i])}) has id {value!r}, not an integer; give every {kind[:-1]} an integer id")
        ids[i], has[i] = int(value), True
    return ids, has


def check_ids(kind: str, ids: np.ndarray, has_id: np.ndarray, labels: Sequence[str]) -> None:
    """Raise :class:`InvalidCocoError` for an entry of the ``kind`` list (``images``, ``categories``) without
    an id, or, for ``images``, two with one id (pycocotools would keep the last, and count the other's
    annotations on it). ``ids``: int64 [N]; ``has_id``: bool [N]; ``labels``: [N], file names or names."""
    missing = np.flatnonzero(~np.asarray(has_id, dtype=bool))
    if len(missing):
        i = int(missing[0])
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InvalidCocoError(f"{kind}[{i}] ({_label(kind, labels[i])}) has no id{more}; give every {kind[:-1]} an integer \"id\"")
    if kind != "images":
        return
    order = np.argsort(ids, kind="stable")
    same = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if len(same):
        a, b = int(order[same[0]]), int(order[same[0] + 1])
        more = f" ({len(same)} images repeat an id)" if len(same) > 1 else ""
        raise InvalidCocoError(
            f"images[{a}] ({labels[a]!r}) and images[{b}] ({labels[b]!r}) have the same id {int(ids[a])}{more}; "
            f"give each image its own id"
        )


def _text(value: Any) -> str:
    """A ``file_name`` as pyarrow reads it: null is ``""``."""
    return "" if value is None else str(value)


def _label(kind: str, label: str) -> str:
    return f"file_name {label!r}" if kind == "images" else f"name {label!r}"


def _dataset(
    gt: GroundTruth, dropped: dict[str, int], image_ids: np.ndarray, file_names: list[str], category_names: dict[int, str]
) -> CocoDataset:
    if any(dropped.values()):
        logger.warning("ground truth: %d annotations dropped: %s", sum(dropped.values()), {k: v for k, v in dropped.items() if v})
    return CocoDataset(gt, np.asarray(image_ids, dtype=np.int64), file_names, category_names, dropped)
