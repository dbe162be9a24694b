"""The packed-key sorts give exactly the permutation of np.lexsort."""

from __future__ import annotations

import numpy as np
import pytest

from detbatch.metrics.order import detection_order, record_order


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("big_keys", [False, True])
def test_detection_order_equals_lexsort(dtype, big_keys):
    rng = np.random.default_rng(0)
    n = 5000
    key = rng.integers(0, 50, n) + (2**40 if big_keys else 0)
    score = (np.round(rng.random(n) * 4) / 4).astype(dtype)  # many ties
    score[rng.random(n) < 0.05] = -0.0
    score[rng.random(n) < 0.05] = 0.0
    boxes = rng.integers(0, 3, (n, 4)).astype(dtype)  # ties in boxes too
    expected = np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], -score, key))
    got = detection_order(key, score, boxes)
    # Rows identical in every key may come in either order; compare the sorted values.
    cols = [key, score, *boxes.T]
    for c in cols:
        assert np.array_equal(c[got], c[expected])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("image_base", [0, 2**60])
def test_record_order_equals_lexsort(dtype, image_base):
    rng = np.random.default_rng(1)
    n = 5000
    score = (np.round(rng.random(n) * 8) / 8).astype(dtype)
    image_id = rng.integers(0, 30, n) + image_base
    rank = rng.integers(0, 100, n).astype(np.int32)
    expected = np.lexsort((rank, image_id, -score))
    got = record_order(score, image_id, rank)
    for c in (score, image_id, rank):
        assert np.array_equal(c[got], c[expected])
