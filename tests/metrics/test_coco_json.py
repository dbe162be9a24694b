"""Reading COCO JSON into columns: the pyarrow path equals json.loads + GroundTruth.from_coco."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detbatch.metrics import evaluate_coco
from detbatch.metrics.coco_json import InvalidCocoError, NotCocoError, read_coco_json, read_with_arrow, read_with_json

from tests.helpers.oracle import adversarial_coco, pycocotools_eval


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


# Ground truth evaluation cannot use (docs/evaluate.md, "Ground truth: what is checked"). Each document
# goes through both readers: pyarrow's (read_with_arrow) and json.loads (read_with_json).
READERS = [read_with_arrow, read_with_json]


def _doc(images, annotations, categories=({"id": 1, "name": "c"},)) -> bytes:
    return json.dumps({"images": list(images), "categories": list(categories), "annotations": list(annotations)}).encode()


def _ann(image_id=1, category_id=1, bbox=(0.0, 0.0, 4.0, 4.0), **kw):
    out = {"image_id": image_id, "category_id": category_id, "bbox": list(bbox), **kw}
    return {k: v for k, v in out.items() if v is not ...}


@pytest.mark.parametrize("reader", READERS)
def test_image_without_id_is_refused(reader):
    """pyarrow read a missing id as null, which became -9223372036854775808; json.loads blamed an annotation."""
    doc = _doc([{"id": 1, "file_name": "a.jpg"}, {"file_name": "b.jpg"}], [_ann()])
    with pytest.raises(InvalidCocoError, match=r"images\[1\] \(file_name 'b.jpg'\) has no id.*give every image"):
        reader(doc)


@pytest.mark.parametrize("reader", READERS)
def test_two_images_with_one_id_are_refused(reader):
    """pycocotools keeps the last image of an id; the first image's annotations would count on the other."""
    doc = _doc([{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}, {"id": 1, "file_name": "c.jpg"}], [_ann()])
    with pytest.raises(InvalidCocoError, match=r"images\[0\] \('a.jpg'\) and images\[2\] \('c.jpg'\) have the same id 1.*own id"):
        reader(doc)


def _unusable_annotations():
    nan = float("nan")
    anns = [
        _ann(),  # kept
        _ann(image_id=None),  # null image_id
        _ann(image_id=...),  # no image_id
        _ann(image_id=99),  # not a listed image
        _ann(category_id=...),  # no category_id
        _ann(category_id=42),  # not a listed category
        _ann(bbox=(nan, 0.0, 4.0, 4.0)),
        _ann(bbox=(None, 0.0, 4.0, 4.0)),
        _ann(bbox=(0.0, 0.0, -1.0, 4.0)),
        _ann(bbox=(0.0, 0.0, 4.0, -0.5)),
        _ann(bbox=(1.0, 1.0, 0.0, 3.0)),  # zero area: kept, as pycocotools keeps it
        _ann(image_id=2, bbox=(1.0, 1.0, 0.0, 0.0), area=0.0),  # kept
    ]
    expected = {"no_image_id": 2, "unknown_image_id": 1, "no_category_id": 1, "unknown_category_id": 1,
                "non_finite_bbox": 2, "negative_size": 2}  # fmt: skip
    return _doc([{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}], anns), expected


@pytest.mark.parametrize("reader", READERS)
def test_unusable_annotations_are_dropped_and_counted(reader):
    """Dropped silently before (the json path raised on a missing image_id); now counted, by reason."""
    doc, expected = _unusable_annotations()
    result = reader(doc)
    assert result.annotations_dropped == expected
    assert len(result.gt) == 3 and result.gt.image_id.tolist() == [1, 1, 2]
    _assert_same(result, read_with_json(doc))


def test_infinite_bbox_is_dropped_and_counted():
    """1e999 parses as inf in json.loads (pyarrow refuses it, so read_coco_json falls back)."""
    doc = _doc([{"id": 1, "file_name": "a.jpg"}], [_ann(), _ann()]).replace(b"[0.0, 0.0, 4.0, 4.0]}]", b"[0.0, 0.0, 1e999, 4.0]}]")
    result = read_coco_json(doc)
    assert result.annotations_dropped["non_finite_bbox"] == 1 and len(result.gt) == 1


def test_zero_area_ground_truth_equals_pycocotools():
    """pycocotools keeps a zero-width or zero-height box: it can match nothing (IoU 0) and counts as missed."""
    dataset, dt = adversarial_coco(5)
    for a in dataset["annotations"][::4]:
        a["bbox"][2 + a["id"] % 2] = 0.0
    for a in dataset["annotations"][::12]:
        a["bbox"][2:] = [0.0, 0.0]
        a["area"] = 0.0
    for reader in READERS:
        result = reader(json.dumps(dataset).encode())
        assert sum(result.annotations_dropped.values()) == 0
        ours = evaluate_coco(result.gt, dt)
        ev = pycocotools_eval(dataset, dt)
        np.testing.assert_allclose(ours.stats, ev.stats, rtol=0, atol=1e-9)
        np.testing.assert_allclose(ours.precision, ev.eval["precision"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(ours.recall, ev.eval["recall"], rtol=0, atol=1e-12)
