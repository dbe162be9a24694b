"""Pascal VOC XML: the 1-based box convention, difficult and truncated, and every bad-label kind."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest

from detbatch.datasets.labels import load_annotations
from detbatch.datasets.voc import LabelParseError, coco_to_voc_box, parse_voc, voc_to_coco_box, voc_xml

from tests.datasets.conftest import write_files


def xml(filename: str | None, size: tuple[int, int] | None, *objects: str) -> str:
    name = f"<filename>{filename}</filename>" if filename else ""
    dims = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    return f"<annotation>{name}{dims}{''.join(objects)}</annotation>"


def obj(name: str, box: tuple, difficult: int = 0, truncated: int = 0) -> str:
    corners = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    return (f"<object><name>{name}</name><truncated>{truncated}</truncated><difficult>{difficult}</difficult>"
            f"<bndbox>{corners}</bndbox></object>")


def test_voc_pixel_indices_are_one_based_and_inclusive():
    # A box over VOC pixels 1..10 (the first ten columns) is COCO x 0, width 10.
    assert voc_to_coco_box(*map(Decimal, ("1", "1", "10", "20"))) == (0.0, 0.0, 10.0, 20.0)
    assert coco_to_voc_box([0.0, 0.0, 10.0, 20.0]) == ("1", "1", "10", "20")
    assert coco_to_voc_box([120.31, 0.5, 1e-05, 3.0]) == ("121.31", "1.5", "120.31001", "3.5")


def test_float_boxes_round_trip_bit_for_bit():
    rng = np.random.default_rng(0)
    boxes = np.concatenate([rng.uniform(0, 2000, (500, 4)), np.round(rng.uniform(0, 640, (500, 4)), 2), rng.uniform(0, 1e-3, (50, 4))])
    for box in boxes.tolist():
        assert list(voc_to_coco_box(*map(Decimal, coco_to_voc_box(box)))) == box


def test_difficult_is_a_crowd_and_truncated_is_kept(dataset_dir):
    write_files(dataset_dir / "Annotations", {
        "a.xml": xml("a.png", (80, 40), obj("dog", (1, 1, 10, 10), difficult=1), obj("cat", (11, 1, 20.5, 40), truncated=1)),
        "b.xml": xml("b.png", (30, 60)),  # no objects: a negative
        "sub/c.xml": xml("c.png", (50, 50), obj("dog", (5, 5, 50, 50))),
    })  # fmt: skip
    labels = load_annotations(str(dataset_dir / "Annotations"))
    assert labels.format == "voc" and labels.problems == []
    coco = labels.coco
    assert [(im["id"], im["file_name"], im["width"], im["height"]) for im in coco["images"]] == [
        (1, "a.png", 80, 40), (2, "b.png", 30, 60), (3, "sub/c.png", 50, 50)]  # fmt: skip
    assert coco["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]  # names in sorted order
    dog, cat, dog2 = coco["annotations"]
    assert dog == {"id": 1, "image_id": 1, "category_id": 2, "bbox": [0.0, 0.0, 10.0, 10.0], "area": 100.0,
                   "iscrowd": 1, "difficult": 1, "truncated": 0}  # fmt: skip
    assert cat["bbox"] == [10.0, 0.0, 10.5, 40.0] and cat["iscrowd"] == 0 and cat["truncated"] == 1
    assert dog2["image_id"] == 3 and dog2["bbox"] == [4.0, 4.0, 46.0, 46.0]


def test_written_xml_reads_back():
    anns = [{"category_id": 3, "bbox": [0.0, 1.0, 5.0, 6.0], "iscrowd": 1}, {"category_id": 1, "bbox": [2.0, 2.0, 1.5, 1.0], "truncated": 1}]
    parsed = parse_voc(voc_xml("x/y.jpg", 20, 30, anns, {1: "a", 3: "c"}))
    assert (parsed.filename, parsed.width, parsed.height) == ("y.jpg", 20, 30)
    assert [(o.name, o.bbox, o.difficult, o.truncated) for o in parsed.objects] == [
        ("c", (0.0, 1.0, 5.0, 6.0), True, False), ("a", (2.0, 2.0, 1.5, 1.0), False, True)]  # fmt: skip


@pytest.mark.parametrize("text, reason", [
    ("<annotation><object>", "not XML"),
    ("<root/>", "not <annotation>"),
    (xml("a.png", (80, 40), "<object><name>dog</name></object>"), "no <name> or no <bndbox>"),
    (xml("a.png", (80, 40), obj("dog", (1, 1, "ten", 10))), "'ten', not a number"),
    (xml("a.png", (80, 40), obj("dog", (1, 1, "nan", 10))), "not a finite number"),
    (xml("a.png", (80.5, 40)), "not a whole number"),
])  # fmt: skip
def test_files_that_do_not_parse(text, reason):
    with pytest.raises(LabelParseError, match=reason):
        parse_voc(text.encode())


def test_every_bad_label_is_a_problem_and_the_rest_is_read(dataset_dir):
    write_files(dataset_dir / "images", {"b.jpg": b"\xff\xd8 not really", "broken.png": b""})  # b.png and b.jpg: which is b.xml's?
    write_files(dataset_dir / "Annotations", {
        "a.xml": xml("a.png", (81, 40),  # the header says 80x40
                     obj("dog", (1, 1, 10, 10)), obj("dog", (5, 5, 4, 9)),  # zero width: xmax = xmin - 1
                     obj("dog", (70, 1, 82, 10)), obj("bird", (1, 1, 2, 2))),  # past the right edge; not in the names
        "b.xml": xml("b.png", (30, 60), obj("dog", (1, 1, 2, 2))),
        "gone.xml": xml("gone.png", (10, 10)),
        "broken.xml": "<annotation>",
    })  # fmt: skip
    write_files(dataset_dir, {"names.txt": "dog\ncat\n"})
    labels = load_annotations(str(dataset_dir / "Annotations"), "voc", names=str(dataset_dir / "names.txt"))
    assert labels.counts() == {"unparsable": 1, "label_without_image": 1, "ambiguous_image": 1, "image_without_labels": 1,
                               "size_mismatch": 1, "unknown_class": 1, "empty_box": 1, "box_outside_image": 1}  # fmt: skip
    by_kind = {p.kind: p for p in labels.problems}
    assert by_kind["unparsable"].file.endswith("broken.xml") and "not XML" in by_kind["unparsable"].message
    assert by_kind["label_without_image"].file.endswith("gone.xml")
    assert "b.jpg, b.png" in by_kind["ambiguous_image"].message
    assert by_kind["image_without_labels"].file.endswith("sub/c.png")
    assert "81x40" in by_kind["size_mismatch"].message and "'bird'" in by_kind["unknown_class"].message
    coco = labels.coco
    # a.png with its one good box (ids from the names list), and sub/c.png as a negative.
    assert [(im["file_name"], im["width"]) for im in coco["images"]] == [("a.png", 80), ("sub/c.png", 50)]
    assert [(a["image_id"], a["category_id"], a["bbox"]) for a in coco["annotations"]] == [(1, 1, [0.0, 0.0, 10.0, 10.0])]
    assert coco["categories"] == [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}]
    dropped = load_annotations(str(dataset_dir / "Annotations"), "voc", names=str(dataset_dir / "names.txt"), negatives=False)
    assert [im["file_name"] for im in dropped.coco["images"]] == ["a.png"]
    assert dropped.counts()["image_without_labels"] == 1


def test_without_an_images_folder_the_xml_names_its_image(tmp_path):
    write_files(tmp_path / "ann", {"v1/x.xml": xml("x.jpg", (64, 48), obj("car", (1, 1, 64, 48))),
                                   "nosize.xml": xml("y.jpg", None)})  # fmt: skip
    labels = load_annotations(str(tmp_path / "ann"), "voc")
    assert [(im["file_name"], im["width"], im["height"]) for im in labels.coco["images"]] == [("v1/x.jpg", 64, 48)]
    assert labels.coco["annotations"][0]["bbox"] == [0.0, 0.0, 64.0, 48.0]
    assert labels.counts() == {"label_without_image": 1}
