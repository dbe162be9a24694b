from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detbatch import storage
from detbatch.datasets.synth import CATEGORIES, render_image, synthesize


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    synthesize(str(out), num_images=40, seed=7)
    return out


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    first = synthesize(str(tmp_path / "a"), num_images=6, seed=3)
    synthesize(str(tmp_path / "b"), num_images=6, seed=3)
    synthesize(str(tmp_path / "c"), num_images=6, seed=4)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert sorted(a) == ["annotations.json"] + [f"images/{i:06d}.png" for i in range(1, 7)]
    assert a == b
    assert sorted(c) == sorted(a)
    assert all(a[name] != c[name] for name in a)
    assert first.num_images == 6 and first.num_annotations == len(json.loads(a["annotations.json"])["annotations"])


def test_image_depends_on_seed_and_id_not_on_count(tmp_path):
    synthesize(str(tmp_path / "few"), num_images=2, seed=5)
    synthesize(str(tmp_path / "more"), num_images=4, seed=5)
    for name in ("000001.png", "000002.png"):
        assert (tmp_path / "few" / "images" / name).read_bytes() == (tmp_path / "more" / "images" / name).read_bytes()


def test_annotations_are_valid_coco(dataset):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco = COCO(str(dataset / "annotations.json"))
    assert coco.loadCats(coco.getCatIds()) == CATEGORIES
    assert sorted(coco.getImgIds()) == list(range(1, 41))
    per_image = [len(coco.getAnnIds(imgIds=[i])) for i in coco.getImgIds()]
    assert min(per_image) >= 1 and max(per_image) <= 4
    assert {a["category_id"] for a in coco.dataset["annotations"]} == {1, 2, 3}
    for info in coco.loadImgs(coco.getImgIds()):
        with Image.open(dataset / "images" / info["file_name"]) as image:
            assert image.mode == "RGB" and image.size == (info["width"], info["height"]) == (128, 128)
        boxes = [a["bbox"] for a in coco.loadAnns(coco.getAnnIds(imgIds=[info["id"]]))]
        for x, y, w, h in boxes:
            assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128
            assert 10 <= max(w, h) <= 48  # a 12 px triangle's box can be a pixel or two smaller
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert _iou(a, b) <= 0.1

    # Oracle: the ground truth scored as detections is perfect under COCO's own evaluation.
    detections = [dict(a, score=1.0) for a in coco.dataset["annotations"]]
    evaluation = COCOeval(coco, coco.loadRes(detections), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[1] == pytest.approx(1.0)  # AP50


def test_boxes_are_tight_around_the_shape_pixels(dataset):
    """Each shape is one flat colour found nowhere else in its image: its pixels give box and area."""
    coco = json.loads((dataset / "annotations.json").read_text())
    checked = 0
    for info in coco["images"][:15]:
        pixels = np.asarray(Image.open(dataset / "images" / info["file_name"]))
        for ann in (a for a in coco["annotations"] if a["image_id"] == info["id"]):
            x, y, w, h = (int(v) for v in ann["bbox"])
            inside = pixels[y : y + h, x : x + w].reshape(-1, 3)
            colors, counts = np.unique(inside, axis=0, return_counts=True)
            color = colors[counts.argmax()]
            mask = (pixels == color).all(axis=-1)
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            assert [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1] == ann["bbox"]
            assert mask.sum() == ann["area"]
            # Visible: the background ring just outside the shape differs clearly from its colour.
            ring = _dilate(mask) & ~mask
            distance = np.sqrt(((pixels[ring].astype(float) - color) ** 2).sum(axis=1))
            assert np.median(distance) > 40
            checked += 1
    assert checked >= 30


def test_render_image_matches_the_written_files(dataset):
    coco = json.loads((dataset / "annotations.json").read_text())
    image = render_image(7, 3)
    assert np.array_equal(np.asarray(Image.open(dataset / "images" / "000003.png")), image.pixels)
    anns = [a for a in coco["annotations"] if a["image_id"] == 3]
    assert [a["bbox"] for a in anns] == image.boxes.tolist()
    assert [a["category_id"] for a in anns] == image.labels.tolist()
    assert [a["area"] for a in anns] == image.masks.sum(axis=(1, 2)).tolist()
    assert not (image.masks.sum(axis=0) > 1).any()  # no shared pixels


def test_sizes_scale_with_image_size(tmp_path):
    synthesize(str(tmp_path), num_images=10, seed=1, image_size=64, max_objects=2)
    coco = json.loads((tmp_path / "annotations.json").read_text())
    assert {(i["width"], i["height"]) for i in coco["images"]} == {(64, 64)}
    assert Image.open(tmp_path / "images" / "000010.png").size == (64, 64)
    assert all(4 <= max(a["bbox"][2:]) <= 24 for a in coco["annotations"])
    counts = np.bincount([a["image_id"] for a in coco["annotations"]])[1:]
    assert counts.min() >= 1 and counts.max() <= 2


def test_s3_matches_local(tmp_path, s3_bucket):
    out = f"{s3_bucket}/synth/v1"
    result = synthesize(out, num_images=5, seed=2)
    synthesize(str(tmp_path), num_images=5, seed=2)
    assert result.annotations_uri == f"{out}/annotations.json"
    assert storage.read_bytes(result.annotations_uri) == (tmp_path / "annotations.json").read_bytes()
    for i in range(1, 6):
        remote = storage.read_bytes(storage.join(result.images_uri, f"{i:06d}.png"))
        assert remote == (tmp_path / "images" / f"{i:06d}.png").read_bytes()
        assert Image.open(io.BytesIO(remote)).size == (128, 128)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_images": 0}, "num_images=0"),
        ({"num_images": 2.5}, "num_images=2.5"),
        ({"seed": -1}, "seed=-1"),
        ({"image_size": 31}, "image_size=31"),
        ({"max_objects": 0}, "max_objects=0"),
    ],
)
def test_bad_arguments_name_the_value(tmp_path, kwargs, name):
    args = {"num_images": 1} | kwargs
    with pytest.raises(ValueError, match=name):
        synthesize(str(tmp_path), **args)
    assert not any(tmp_path.iterdir())


def _iou(a: list[float], b: list[float]) -> float:
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(iw, 0) * max(ih, 0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _dilate(mask: np.ndarray) -> np.ndarray:
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown
