"""AP/AP50/AR100 per slice of the images, each against pycocotools run on that slice alone."""

from __future__ import annotations

import numpy as np
import pytest

from detbatch.metrics import GroundTruth, match_images
from detbatch.metrics.slices import Slices, evaluate_slices

from tests.helpers.oracle import adversarial_coco, pycocotools_eval


def _slice_dataset(dataset, ids):
    ids = set(ids)
    return {
        "images": [im for im in dataset["images"] if im["id"] in ids],
        "categories": dataset["categories"],
        "annotations": [a for a in dataset["annotations"] if a["image_id"] in ids],
    }


@pytest.mark.parametrize("seed", range(3))
def test_each_slice_equals_pycocotools_on_that_slice_alone(seed):
    dataset, dt = adversarial_coco(seed)
    gt = GroundTruth.from_coco(dataset)
    rng = np.random.default_rng(seed)
    slice_of = rng.integers(0, 3, len(gt.image_ids))
    has = rng.random(len(gt.image_ids)) < 0.9  # some images in no slice
    members = [gt.image_ids[has & (slice_of == s)] for s in range(3)] + [gt.image_ids[::2]]  # the last overlaps
    slices = Slices(["s=a", "s=b", "s=c", "even=1"], members)
    ours = evaluate_slices(gt, match_images(gt, dt), slices)
    for s, name in enumerate(slices.names):
        ids = members[s]
        ev = pycocotools_eval(_slice_dataset(dataset, ids.tolist()), dt.take(np.isin(dt.image_id, ids)))
        assert [ours[name][k] for k in ("AP", "AP50", "AR100")] == [ev.stats[0], ev.stats[1], ev.stats[8]], name
        assert ours[name]["images"] == len(ids)
