"""Reading COCO JSON into columns: the pyarrow path equals json.loads + GroundTruth.from_coco."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detbatch.metrics.coco_json import NotCocoError, read_coco_json, read_with_arrow, read_with_json

from tests.helpers.oracle import adversarial_coco


def _assert_same(a, b):
    for field in ("image_id", "category_id", "boxes", "area", "iscrowd", "image_ids", "category_ids", "difficult"):
        assert getattr(a.gt, field).tobytes() == getattr(b.gt, field).tobytes(), field
    assert a.image_ids.tolist() == b.image_ids.tolist() and a.file_names == b.file_names
    assert a.category_names == b.category_names


def test_arrow_reader_equals_json_on_coco128(coco128):
    data = (coco128 / "annotations" / "instances.json").read_bytes()  # polygons and RLE crowds inside
    _assert_same(read_with_arrow(data), read_with_json(data))


def test_arrow_reader_equals_json_with_missing_fields_and_unknown_ids():
    dataset, _ = adversarial_coco(2)
    dataset["annotations"][0].pop("area")
    dataset["annotations"][1].pop("iscrowd")
    dataset["annotations"][2]["difficult"] = 1
    dataset["annotations"][3]["category_id"] = 99999  # not a listed category: dropped by both
    data = json.dumps(dataset).encode()
    _assert_same(read_with_arrow(data), read_with_json(data))


def test_non_standard_types_fall_back_to_json():
    dataset, _ = adversarial_coco(2)
    dataset["annotations"][0]["iscrowd"] = True
    result = read_coco_json(json.dumps(dataset).encode())
    assert result.gt.iscrowd[np.flatnonzero(result.gt.image_id == dataset["annotations"][0]["image_id"])].any()


@pytest.mark.parametrize("doc", [b"[1, 2]", b'{"images": []}', b"not json", b'{"images": [], "categories": [], "annotations": [{"image_id": 1}]}'])
def test_not_coco(doc):
    with pytest.raises(NotCocoError):
        read_coco_json(doc)
