"""YOLO txt: sizes from image headers, names lists, and every bad-label kind."""

from __future__ import annotations

import pytest

from detbatch.datasets.labels import image_size, load_annotations
from detbatch.datasets.voc import LabelParseError
from detbatch.datasets.yolo import Categories, categories_yaml, parse_yolo, read_categories, yolo_line, yolo_to_coco_box
from detbatch.errors import InputError

from tests.datasets.conftest import write_files
from tests.helpers.images import png_bytes


def test_image_size_reads_only_the_header(tmp_path):
    data = png_bytes(size=(123, 45))
    (tmp_path / "x.png").write_bytes(data[:64])  # the pixels cut off: the header alone gives the size
    assert image_size(str(tmp_path / "x.png")) == (123, 45)


def test_boxes_are_normalised_to_the_image():
    assert yolo_to_coco_box((0.5, 0.25, 0.5, 0.5), 80, 40) == (20.0, 0.0, 40.0, 20.0)
    assert yolo_line(2, [20.0, 0.0, 40.0, 20.0], 80, 40) == "2 0.5 0.25 0.5 0.5"
    box = [0.1, 12.34, 637.9, 301.7]
    cx, cy, w, h = (float(v) for v in yolo_line(0, box, 640, 427).split()[1:])
    assert yolo_to_coco_box((cx, cy, w, h), 640, 427) == pytest.approx(box, abs=1e-9)


def test_labels_read_with_sizes_from_headers_and_names_from_data_yaml(dataset_dir):
    write_files(dataset_dir, {
        "data.yaml": "path: .\nnames:\n  0: person\n  1: car\n",
        "labels/a.txt": "0 0.5 0.5 0.5 0.5\n1 0.125 0.25 0.25 0.5\n",
        "labels/b.txt": "",  # an empty file: a negative
        "labels/sub/c.txt": "1 0.5 0.5 1 1\n\n",
        "labels/classes.txt": "not a label file\n",  # LabelImg writes its names here; never read as labels
    })  # fmt: skip
    labels = load_annotations(str(dataset_dir / "labels"))
    assert labels.format == "yolo" and labels.problems == []
    coco = labels.coco
    assert [(im["file_name"], im["width"], im["height"]) for im in coco["images"]] == [("a.png", 80, 40), ("b.png", 30, 60), ("sub/c.png", 50, 50)]
    assert coco["categories"] == [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}]
    assert [(a["image_id"], a["category_id"], a["bbox"], a["iscrowd"]) for a in coco["annotations"]] == [
        (1, 1, [20.0, 10.0, 40.0, 20.0], 0), (1, 2, [0.0, 0.0, 20.0, 20.0], 0), (3, 2, [0.0, 0.0, 50.0, 50.0], 0)]  # fmt: skip


def test_names_lists(tmp_path):
    write_files(tmp_path, {"obj.names": "cat\n\ndog\n", "a.yaml": "names: [x, y]\ncategory_ids: [3, 7]\n",
                           "bad.yaml": "names: {0: x, 2: y}\n", "none.yaml": "nc: 2\n"})  # fmt: skip
    assert read_categories(str(tmp_path / "obj.names")) == Categories([1, 2], ["cat", "dog"])
    assert read_categories(str(tmp_path / "a.yaml")) == Categories([3, 7], ["x", "y"])
    with pytest.raises(InputError, match="class indices run 0..1"):
        read_categories(str(tmp_path / "bad.yaml"))
    with pytest.raises(InputError, match="no names list"):
        read_categories(str(tmp_path / "none.yaml"))
    # detbatch's data.yaml keeps COCO's ids when they are not 1..K, and reads back the same.
    (tmp_path / "out.yaml").write_text(categories_yaml(Categories([1, 3], ["a", "b"])))
    assert read_categories(str(tmp_path / "out.yaml")) == Categories([1, 3], ["a", "b"])
    assert "category_ids" not in categories_yaml(Categories([1, 2], ["a", "b"]))


@pytest.mark.parametrize("text, reason", [
    ("0 0.5 0.5 0.5\n", "4 fields, not 5"),
    ("0 0.1 0.1 0.2 0.2 0.3 0.3\n", "7 fields"),  # a polygon
    ("dog 0.5 0.5 0.5 0.5\n", "not a number"),
    ("0.5 0.5 0.5 0.5 0.5\n", "class must be an integer"),
    ("0 inf 0.5 0.5 0.5\n", "finite"),
])  # fmt: skip
def test_lines_that_do_not_parse(text, reason):
    with pytest.raises(LabelParseError, match=reason):
        parse_yolo(text)


def test_every_bad_label_is_a_problem_and_the_rest_is_read(dataset_dir):
    write_files(dataset_dir / "images", {"d.png": b"not an image", "e.png": png_bytes(size=(10, 10))})
    write_files(dataset_dir, {
        "classes.txt": "person\ncar\n",
        "labels/a.txt": "0 0.5 0.5 0.5 0.5\n"  # kept
                        "2 0.5 0.5 0.5 0.5\n"  # class 2 of 2 names
                        "-1 0.5 0.5 0.5 0.5\n"  # negative index
                        "0 0.5 0.5 0 0.5\n"  # zero width
                        "0 0.9 0.5 0.4 0.5\n",  # reaches x = 1.1 of the width
        "labels/b.txt": "0 0.5 0.5\n",
        "labels/d.txt": "0 0.5 0.5 0.5 0.5\n",  # its image does not decode
        "labels/gone.txt": "0 0.5 0.5 0.5 0.5\n",
        "labels/e.txt": b"\xff\xfe0 0.5",  # not UTF-8
    })  # fmt: skip
    labels = load_annotations(str(dataset_dir / "labels"), "yolo", images=str(dataset_dir / "images"))
    assert labels.counts() == {"unparsable": 2, "label_without_image": 1, "image_without_labels": 1, "unreadable_image": 1,
                               "unknown_class": 2, "empty_box": 1, "box_outside_image": 1}  # fmt: skip
    by_kind = {p.kind: p for p in labels.problems}
    assert by_kind["label_without_image"].file.endswith("gone.txt")
    assert by_kind["unreadable_image"].file.endswith("images/d.png")
    assert by_kind["image_without_labels"].file.endswith("images/sub/c.png")
    assert by_kind["box_outside_image"].file.endswith("labels/a.txt") and "80x40" in by_kind["box_outside_image"].message
    assert [im["file_name"] for im in labels.coco["images"]] == ["a.png", "sub/c.png"]
    assert [a["bbox"] for a in labels.coco["annotations"]] == [[20.0, 10.0, 40.0, 20.0]]


def test_yolo_needs_names_and_images(tmp_path):
    write_files(tmp_path, {"labels/a.txt": "0 0.5 0.5 0.5 0.5\n"})
    with pytest.raises(InputError, match="no images folder"):
        load_annotations(str(tmp_path / "labels"))
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png_bytes())
    with pytest.raises(InputError, match="no names list"):
        load_annotations(str(tmp_path / "labels"))
