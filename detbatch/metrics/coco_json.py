"""Reading a COCO instances JSON into columns, without a Python object per annotation.

A 1M-image ground truth has ~7M annotations: ``json.loads`` makes ~5 GB of dicts of them. pyarrow's JSON
reader parses the document (one JSON value, read as one row) straight into Arrow columns, with a schema
that keeps only the fields evaluation needs and skips the rest (segmentations, keypoints), in a fraction of
the time and memory. Documents it cannot read that way (a non-standard type, such as ``"iscrowd": true``)
go through ``json.loads``; both give identical arrays.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from detbatch.errors import InputError
from detbatch.metrics.columns import GroundTruth

logger = logging.getLogger(__name__)

# pyarrow's reader takes the whole document as one block; its block size is a 32-bit int.
_MAX_ARROW_BYTES = 2**31 - 2


class NotCocoError(InputError):
    """The JSON is not a COCO instances document."""


@dataclass(frozen=True)
class CocoDataset:
    """What evaluation needs of a COCO instances file.

    Attributes:
        gt: the annotations as :class:`GroundTruth`.
        image_ids: int64 [I], in file order.  file_names: list[str] [I], aligned with ``image_ids``.
        category_names: category id -> name.
    """

    gt: GroundTruth
    image_ids: np.ndarray
    file_names: list[str]
    category_names: dict[int, str]


def read_coco_json(data: bytes) -> CocoDataset:
    """Parse a COCO instances document (raises :class:`NotCocoError` if it is not one)."""
    if len(data) <= _MAX_ARROW_BYTES:
        try:
            return read_with_arrow(data)
        except NotCocoError:
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
    bbox = anns.field("bbox")
    if bbox.null_count or len(bbox) and (pc.list_value_length(bbox).to_numpy(zero_copy_only=False) != 4).any():
        raise ValueError("an annotation without a 4-number bbox")
    boxes = bbox.values.to_numpy(zero_copy_only=False).reshape(-1, 4)
    area = anns.field("area").to_numpy(zero_copy_only=False)
    area = np.where(np.isnan(area), boxes[:, 2] * boxes[:, 3], area)
    return _dataset(
        image_ids=images.field("id").to_numpy(zero_copy_only=False),
        file_names=images.field("file_name").fill_null("").to_pylist(),
        category_ids=categories.field("id").to_numpy(zero_copy_only=False),
        category_names=[str(n) for n in categories.field("name").to_pylist()],
        image_id=anns.field("image_id").to_numpy(zero_copy_only=False),
        category_id=anns.field("category_id").to_numpy(zero_copy_only=False),
        boxes=boxes,
        area=area,
        iscrowd=anns.field("iscrowd").fill_null(0).to_numpy(zero_copy_only=False) != 0,
        difficult=anns.field("difficult").fill_null(0).to_numpy(zero_copy_only=False) != 0,
    )


def read_with_json(data: bytes) -> CocoDataset:
    """:func:`read_coco_json` with ``json.loads`` and :meth:`GroundTruth.from_coco`: any size, any JSON
    types, a Python object per annotation."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NotCocoError(f"not JSON ({e})") from e
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(doc, dict) or not isinstance(doc.get(k), list)]
    if missing:
        raise NotCocoError(f"no {', '.join(repr(k) for k in missing)} list")
    try:
        gt = GroundTruth.from_coco(doc)
    except (KeyError, TypeError, ValueError) as e:
        raise NotCocoError(f"an annotation without a usable image_id, category_id or 4-number bbox ({e!r})") from e
    return CocoDataset(
        gt=gt,
        image_ids=np.array([im["id"] for im in doc["images"]], dtype=np.int64),
        file_names=[str(im.get("file_name", "")) for im in doc["images"]],
        category_names={int(c["id"]): str(c.get("name", c["id"])) for c in doc["categories"]},
    )


def _dataset(
    *, image_ids: np.ndarray, file_names: list[str], category_ids: np.ndarray, category_names: list[str],
    image_id: np.ndarray, category_id: np.ndarray, boxes: np.ndarray, area: np.ndarray, iscrowd: np.ndarray,
    difficult: np.ndarray,
) -> CocoDataset:  # fmt: skip
    """Drop annotations of unlisted images or categories, as ``GroundTruth.from_coco`` does."""
    image_ids = np.asarray(image_ids, dtype=np.int64)
    category_ids = np.asarray(category_ids, dtype=np.int64)
    keep = np.isin(image_id, image_ids) & np.isin(category_id, category_ids)
    gt = GroundTruth(
        image_id=image_id[keep], category_id=category_id[keep], boxes=boxes[keep], area=area[keep],
        iscrowd=iscrowd[keep], image_ids=image_ids, category_ids=category_ids, difficult=difficult[keep],
    )  # fmt: skip
    return CocoDataset(gt, image_ids, file_names, dict(zip(category_ids.tolist(), category_names)))
