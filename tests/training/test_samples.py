"""Per-sample training data: box cleaning, augmentation, collation, the seeded validation split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detbatch.datasets.synth import render_image
from detbatch.training.samples import (
    Collate,
    augment,
    clean_annotations,
    is_validation,
    training_target,
)

CATS = np.array([1, 2, 3])


def _ann(bbox, category_id=1, **extra):
    return {"bbox": bbox, "category_id": category_id, **extra}


def test_invalid_boxes_are_dropped_and_counted():
    anns = [
        _ann([10, 10, 20, 20], area=300.0),  # valid; its area kept
        _ann([0, 0, 0, 5]),  # zero width
        _ann([5, 5, 10, -2]),  # negative height
        _ann([90, 10, 20, 20]),  # right edge at 110 > 100 + tolerance
        _ann([-5, 10, 20, 20]),  # left of the image
        _ann([10, 10, float("nan"), 5]),  # non-finite
        _ann([10, 10, 5, 5], category_id=9),  # unknown category
        {"category_id": 1},  # no box at all
        _ann([-0.5, 40, 100.8, 10], iscrowd=1),  # overhangs within tolerance: clipped, kept
    ]
    clean = clean_annotations(anns, width=100, height=80, category_ids=CATS)
    assert clean.num_invalid == 7
    np.testing.assert_allclose(clean.bbox, [[10, 10, 20, 20], [0, 40, 100, 10]])
    np.testing.assert_allclose(clean.area, [300.0, 1000.0])  # missing area: w * h of the clipped box
    assert clean.iscrowd.tolist() == [False, True]


def test_training_target_drops_crowds_and_maps_labels():
    anns = [_ann([1, 2, 3, 4], category_id=3), _ann([0, 0, 10, 10], category_id=1, iscrowd=1), _ann([5, 5, 1, 1], category_id=2)]
    boxes, labels = training_target(clean_annotations(anns, 50, 50, CATS), CATS)
    np.testing.assert_allclose(boxes, [[1, 2, 4, 6], [5, 5, 6, 6]])
    assert boxes.dtype == np.float32 and labels.dtype == np.int64
    assert labels.tolist() == [3, 2]  # category i-th in id order -> label i


def _shape_pixels(image: torch.Tensor, box: np.ndarray, color: np.ndarray) -> float:
    """Fraction of the pixels of ``color`` (the shape) that lie inside ``box`` (xyxy)."""
    rgb = (image * 255).round().permute(1, 2, 0).numpy()
    mask = np.abs(rgb - color).sum(axis=2) < 30
    x0, y0, x1, y1 = box
    inside = mask[int(np.floor(y0)) : int(np.ceil(y1)), int(np.floor(x0)) : int(np.ceil(x1))].sum()
    return inside / max(1, mask.sum())


def test_hflip_moves_boxes_with_pixels():
    im = render_image(seed=5, image_id=1, image_size=64, max_objects=1)
    image = torch.from_numpy(im.pixels).permute(2, 0, 1).float() / 255
    x, y, w, h = im.boxes[0]
    boxes = np.array([[x, y, x + w, y + h]], np.float32)
    flipped, fboxes, labels = augment(image, boxes, im.labels, np.random.default_rng(0), hflip=1.0, scale_jitter=None)
    assert torch.equal(flipped, image.flip(-1))
    np.testing.assert_allclose(fboxes, [[64 - (x + w), y, 64 - x, y + h]])
    assert _shape_pixels(flipped, fboxes[0], im.colors[0]) == 1.0
    assert labels.tolist() == im.labels.tolist()


@pytest.mark.parametrize("jitter", [(1.4, 1.4), (0.6, 0.6)])
def test_scale_jitter_keeps_size_and_boxes_follow_objects(jitter):
    im = render_image(seed=2, image_id=7, image_size=96, max_objects=3)
    image = torch.from_numpy(im.pixels).permute(2, 0, 1).float() / 255
    boxes = np.concatenate([im.boxes[:, :2], im.boxes[:, :2] + im.boxes[:, 2:]], axis=1).astype(np.float32)
    out, oboxes, olabels = augment(image, boxes, im.labels, np.random.default_rng(1), hflip=0.0, scale_jitter=jitter)
    assert out.shape == image.shape
    assert len(oboxes) == len(olabels) <= len(boxes)
    assert (oboxes >= 0).all() and (oboxes[:, 2] <= 96).all() and (oboxes[:, 3] <= 96).all()
    if jitter[0] < 1:
        assert len(oboxes) == len(boxes)  # shrinking keeps every object
        np.testing.assert_allclose(oboxes[:, 2] - oboxes[:, 0], (boxes[:, 2] - boxes[:, 0]) * 0.6, atol=1.0)
    for box, label in zip(oboxes, olabels):
        color = im.colors[list(im.labels).index(label)] if list(im.labels).count(label) == 1 else None
        if color is not None and jitter[0] < 1:
            # Resampling blurs edges; the flat interior of the shape must be inside its box.
            assert _shape_pixels(out, box + np.array([-1, -1, 1, 1]), color) > 0.9


def test_collate_skips_unreadable_rows_and_counts():
    im = render_image(seed=0, image_id=1, image_size=32, max_objects=2)
    bbox = im.boxes.astype(np.float64).reshape(-1)
    batch = {
        "image_id": np.array([1, 2]),
        "uri": np.array(["a.png", "b.png"], dtype=object),
        "pixels": np.array([im.pixels.tobytes(), b""], dtype=object),
        "height": np.array([32, 0]),
        "width": np.array([32, 0]),
        "error": np.array([None, "corrupt image: broken"], dtype=object),
        "bbox": np.array([bbox, np.zeros(0)], dtype=object),
        "category_id": np.array([im.labels.astype(np.int64), np.zeros(0, np.int64)], dtype=object),
        "area": np.array([im.areas.astype(np.float64), np.zeros(0)], dtype=object),
        "iscrowd": np.array([np.zeros(len(im.labels), bool), np.zeros(0, bool)], dtype=object),
        "invalid_boxes": np.array([2, 0]),
    }
    out = Collate([1, 2, 3], hflip=0.0, scale_jitter=None, seed=(0,))(batch)
    assert out.skipped == 1 and out.invalid_boxes == 2 and out.image_ids == [1]
    assert out.images[0].shape == (3, 32, 32) and out.images[0].dtype == torch.float32
    assert out.targets[0]["boxes"].shape == (len(im.labels), 4)
    assert out.targets[0]["labels"].tolist() == im.labels.tolist()


def test_validation_split_is_seeded_and_about_the_fraction():
    ids = range(1, 5001)
    val = [i for i in ids if is_validation(i, seed=0, fraction=0.2)]
    assert val == [i for i in ids if is_validation(i, seed=0, fraction=0.2)]
    assert 900 < len(val) < 1100
    assert val != [i for i in ids if is_validation(i, seed=1, fraction=0.2)]
    assert not any(is_validation(i, seed=0, fraction=0.0) for i in ids)
