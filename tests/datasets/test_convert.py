"""``detbatch convert``: every format to every other, round trips exact to each format's precision."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detbatch import storage
from detbatch.cli import main
from detbatch.datasets.convert import convert, write_labels
from detbatch.datasets.labels import detect_format, load_annotations
from detbatch.datasets.synth import synthesize
from detbatch.errors import InputError

# YOLO keeps float64 of normalised numbers: a pixel box comes back within float64 rounding of (cx - w/2) * W.
YOLO_PIXEL_TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """12 synthetic images, 96 px; a few boxes marked crowd, truncated, or with fractional coordinates."""
    root = tmp_path_factory.mktemp("convert") / "ds"
    synthesize(str(root), 12, seed=5, image_size=96, max_objects=3)
    coco = json.loads((root / "annotations.json").read_text())
    for i, ann in enumerate(coco["annotations"]):
        if i % 7 == 3:
            ann["iscrowd"] = 1
        if i % 5 == 1:
            ann["truncated"] = 1
        if i % 4 == 2:
            ann["bbox"] = [ann["bbox"][0] + 0.37, ann["bbox"][1] + 0.1, ann["bbox"][2] - 0.49, ann["bbox"][3] - 1.3]
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def boxes_by_file(coco: dict, crowds: bool = True) -> list[tuple]:
    """(file_name, category_id, bbox, iscrowd) of each annotation, in a stable order."""
    names = {im["id"]: im["file_name"] for im in coco["images"]}
    rows = [(names[a["image_id"]], a["category_id"], a["bbox"], int(a.get("iscrowd", 0))) for a in coco["annotations"]]
    return sorted((r for r in rows if crowds or not r[3]), key=lambda r: (r[0], r[1], r[2]))


def assert_yolo_round_trip(got: dict, want: dict) -> None:
    """``got`` (read back from YOLO) has ``want``'s boxes but its crowds, each within float64 rounding."""
    got_rows, want_rows = boxes_by_file(got), boxes_by_file(want, crowds=False)
    assert [r[:2] for r in got_rows] == [r[:2] for r in want_rows]
    np.testing.assert_allclose([r[2] for r in got_rows], [r[2] for r in want_rows], rtol=0, atol=YOLO_PIXEL_TOLERANCE)


def test_coco_voc_coco_is_exact(shapes, tmp_path):
    coco = json.loads((shapes / "annotations.json").read_text())
    voc = convert(str(shapes / "annotations.json"), str(tmp_path / "voc"), "voc", images=str(shapes / "images"))
    assert voc.labels_uri == str(tmp_path / "voc" / "Annotations") and voc.labels.problems == []
    assert detect_format(voc.labels_uri) == "voc"
    back = convert(voc.labels_uri, str(tmp_path / "coco"), "coco", images=str(shapes / "images")).labels.coco
    assert boxes_by_file(back) == boxes_by_file(coco)  # float64 bboxes bit for bit; crowds come back as crowds
    assert back["categories"] == [{"id": c["id"], "name": c["name"]} for c in coco["categories"]]
    truncated = {(a["bbox"][0], a["bbox"][1]) for a in coco["annotations"] if a.get("truncated")}
    assert {(a["bbox"][0], a["bbox"][1]) for a in back["annotations"] if a["truncated"]} == truncated
    # VOC has no areas: they come back as w * h.
    assert all(a["area"] == a["bbox"][2] * a["bbox"][3] for a in back["annotations"])
    assert json.loads((tmp_path / "coco" / "annotations.json").read_text()) == back


def test_coco_yolo_coco_is_exact_to_float64_rounding(shapes, tmp_path):
    coco = json.loads((shapes / "annotations.json").read_text())
    yolo = convert(str(shapes / "annotations.json"), str(tmp_path / "yolo"), "yolo", images=str(shapes / "images"))
    assert detect_format(yolo.labels_uri) == "yolo"
    assert_yolo_round_trip(load_annotations(yolo.labels_uri, images=str(shapes / "images")).coco, coco)


@pytest.mark.parametrize("first, second", [("voc", "yolo"), ("yolo", "voc")])
def test_voc_and_yolo_convert_into_each_other(shapes, tmp_path, first, second):
    images = str(shapes / "images")
    a = convert(str(shapes / "annotations.json"), str(tmp_path / first), first, images=images)
    b = convert(a.labels_uri, str(tmp_path / second), second, images=images)
    back = load_annotations(b.labels_uri, images=images).coco
    # VOC's difficult objects are crowds, which YOLO leaves out: compare what both formats hold.
    assert_yolo_round_trip(back | {"annotations": [a for a in back["annotations"] if not a["iscrowd"]]},
                           json.loads((shapes / "annotations.json").read_text()))


def test_coco128_round_trips(coco128, tmp_path):
    source, images = str(coco128 / "annotations" / "instances.json"), str(coco128 / "images")
    coco = json.loads(Path(source).read_text())
    voc = convert(source, str(tmp_path / "voc"), "voc", images=images)
    assert voc.labels.problems == []
    back = load_annotations(voc.labels_uri, images=images).coco
    assert boxes_by_file(back) == boxes_by_file(coco)  # 939 boxes, 10 crowds, bit for bit
    # COCO's ids have gaps (1..90 for 80 classes): data.yaml keeps them.
    assert back["categories"] == [{"id": c["id"], "name": c["name"]} for c in coco["categories"]]
    yolo = convert(source, str(tmp_path / "yolo"), "yolo", images=images)
    assert_yolo_round_trip(load_annotations(yolo.labels_uri, images=images).coco, coco)


def test_sizes_are_checked_against_the_headers(shapes, tmp_path):
    coco = json.loads((shapes / "annotations.json").read_text())
    coco["images"][0]["width"] = 200  # wrong: the image is 96 px
    coco["images"].append({"id": 99, "file_name": "missing.png", "width": 96, "height": 96})
    coco["annotations"].append({"id": 999, "image_id": 2, "category_id": 7, "bbox": [1, 1, 5, 5]})
    coco["annotations"].append({"id": 998, "image_id": 2, "category_id": 1, "bbox": [90, 1, 10, 5]})
    (tmp_path / "bad.json").write_text(json.dumps(coco))
    result = convert(str(tmp_path / "bad.json"), str(tmp_path / "out"), "coco", images=str(shapes / "images"))
    assert result.labels.counts() == {"label_without_image": 1, "size_mismatch": 1, "unknown_class": 1, "box_outside_image": 1}
    out = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert out["images"][0]["width"] == 96 and 99 not in {im["id"] for im in out["images"]}
    assert not {998, 999} & {a["id"] for a in out["annotations"]}
    problems = [json.loads(line) for line in (tmp_path / "out" / "problems.jsonl").read_text().splitlines()]
    assert sorted(p["kind"] for p in problems) == sorted(result.labels.counts())
    assert all(set(p) == {"file", "kind", "message"} for p in problems)


def test_convert_cli_and_unknown_format(shapes, tmp_path, capsys):
    assert main(["convert", str(shapes / "annotations.json"), str(tmp_path / "y"), "--to", "yolo", "--images", str(shapes / "images")]) == 0
    assert capsys.readouterr().out.startswith("convert: 12 images")
    assert main(["convert", str(tmp_path / "y" / "labels"), str(tmp_path / "v"), "--to", "voc", "--annotations-format", "voc",
                 "--images", str(shapes / "images")]) == 2  # fmt: skip
    assert "no .xml label files" in capsys.readouterr().err
    with pytest.raises(InputError, match="unknown annotations format 'kitti'"):
        load_annotations(str(shapes / "annotations.json"), "kitti")


def test_a_folder_with_both_kinds_is_ambiguous(tmp_path):
    (tmp_path / "l").mkdir()
    (tmp_path / "l" / "a.xml").write_text("<annotation/>")
    (tmp_path / "l" / "b.txt").write_text("")
    with pytest.raises(InputError, match="both .xml and .txt"):
        detect_format(str(tmp_path / "l"))


def test_write_refuses_two_images_with_one_label_file(tmp_path):
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 9, "height": 9}, {"id": 2, "file_name": "a.png", "width": 9, "height": 9}],
            "annotations": [], "categories": [{"id": 1, "name": "x"}]}  # fmt: skip
    with pytest.raises(InputError, match="share the label file a"):
        write_labels(coco, str(tmp_path), "yolo")


def test_labels_on_s3(shapes, s3_bucket):
    for path in sorted((shapes / "images").iterdir())[:4]:
        storage.write_bytes(f"{s3_bucket}/ds/images/{path.name}", path.read_bytes())
    coco = json.loads((shapes / "annotations.json").read_text())
    keep = {im["id"] for im in coco["images"][:4]}
    coco = coco | {"images": coco["images"][:4], "annotations": [a for a in coco["annotations"] if a["image_id"] in keep]}
    storage.write_text(f"{s3_bucket}/ds/annotations.json", json.dumps(coco))
    voc = convert(f"{s3_bucket}/ds/annotations.json", f"{s3_bucket}/voc", "voc")  # images found beside the JSON
    assert voc.labels.problems == [] and voc.labels_uri == f"{s3_bucket}/voc/Annotations"
    back = load_annotations(voc.labels_uri, images=f"{s3_bucket}/ds/images").coco
    assert boxes_by_file(back) == boxes_by_file(coco)
