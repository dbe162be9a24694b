"""The grouping COCO and VOC share, against plain loops: pairs and edges for the map, categories for the
reduce."""

from __future__ import annotations

import numpy as np
import pytest

from detbatch.metrics import GroundTruth, evaluated_detections, match_images
from detbatch.metrics.grouping import (
    accumulate_by_category,
    count_per_category,
    every_category,
    mean_valid,
    pair_detections,
)

from tests.helpers.oracle import adversarial_coco, tie_order


@pytest.fixture(scope="module")
def data():
    dataset, dt = adversarial_coco(3)
    gt = GroundTruth.from_coco(dataset)
    dt, _ = evaluated_detections(gt, dt)
    return gt, dt


def test_detections_are_sorted_into_pairs_in_the_tie_order(data):
    gt, dt = data
    pairs = pair_detections(gt, dt)
    expected = dt.take(tie_order(dt))
    # Rows equal in every key may come in either order: compare the values.
    for a, b in ((pairs.dt.image_id, expected.image_id), (pairs.dt.category_id, expected.category_id),
                 (pairs.dt.score, expected.score), (pairs.dt.boxes, expected.boxes)):  # fmt: skip
        assert a.tobytes() == b.tobytes()
    pair, rank = -1, 0
    for i in range(len(dt)):
        new = i == 0 or (pairs.dt.image_id[i], pairs.dt.category_id[i]) != (pairs.dt.image_id[i - 1], pairs.dt.category_id[i - 1])
        pair, rank = (pair + 1, 0) if new else (pair, rank + 1)
        assert (pairs.pair[i], pairs.rank[i]) == (pair, rank), i


def _ground_truth_of(gt, image_id, category_id):
    return [g for g in range(len(gt)) if gt.image_id[g] == image_id and gt.category_id[g] == category_id]


def test_edges_are_each_detections_ground_truth_in_annotation_order(data):
    gt, dt = data
    pairs = pair_detections(gt, dt)
    counted = pairs.rank < 5
    edges = pairs.edges(counted)
    total = 0
    for d in range(len(dt)):
        own = _ground_truth_of(gt, pairs.dt.image_id[d], pairs.dt.category_id[d]) if counted[d] else []
        rows = slice(edges.start[d], edges.start[d] + len(own))
        assert edges.gt[rows].tolist() == own and (edges.det[rows] == d).all(), d
        total += len(own)
    assert len(edges.det) == len(edges.gt) == total
    assert len(pairs.edges().det) > total  # without `counted`, every detection has its edges


def test_ground_truth_of_pairs(data):
    gt, dt = data
    pairs = pair_detections(gt, dt)
    first = np.flatnonzero(np.r_[True, pairs.pair[1:] != pairs.pair[:-1]])  # a detection of each pair
    chosen = np.array([3, 0, 3, len(first) - 1])  # any order, repeats allowed
    owner, slot, annotation = pairs.ground_truth_of(pairs.pair[first[chosen]])
    expected = [(q, s, g) for q, c in enumerate(chosen)
                for s, g in enumerate(_ground_truth_of(gt, pairs.dt.image_id[first[c]], pairs.dt.category_id[first[c]]))]  # fmt: skip
    assert list(zip(owner.tolist(), slot.tolist(), annotation.tolist())) == expected


def test_count_per_category(data):
    gt, _ = data
    counted = np.stack([~gt.iscrowd, gt.area > 100], axis=1)
    expected = [[int(counted[gt.category_id == c, j].sum()) for j in range(2)] for c in gt.category_ids]
    assert count_per_category(gt, counted).tolist() == expected


def test_reduce_per_category_in_pieces(data):
    gt, dt = data
    records = match_images(gt, dt)
    records = records.take(records.category_id != gt.category_ids[0])  # a category without records
    gt_counts = np.arange(len(gt.category_ids) * 2).reshape(-1, 2)

    def accumulate(rec, num_gt):  # what each category's reduce is given
        assert len(set(rec.category_id.tolist())) <= 1
        return int(rec.rank.sum()), tuple(num_gt.tolist())

    # As the distributed reduce: the categories in two shards, each accumulated on its own.
    with_records = np.unique(records.category_id)
    shard = np.isin(records.category_id, with_records[::2])
    parts = accumulate_by_category(records.take(shard), gt.category_ids, gt_counts, accumulate)
    parts |= accumulate_by_category(records.take(~shard), gt.category_ids, gt_counts, accumulate)
    assert sorted(parts) == with_records.tolist()
    got = every_category(gt.category_ids, gt_counts, parts, accumulate)
    for k, cat in enumerate(gt.category_ids):
        mine = records.category_id == cat
        assert got[k] == (int(records.rank[mine].sum()), tuple(gt_counts[k].tolist()), int(mine.sum())), cat


@pytest.mark.parametrize(("values", "expected"), [([-1.0, -1.0], -1.0), ([0.5, -1.0, 1.0], 0.75), ([], -1.0)])
def test_mean_valid(values, expected):
    assert mean_valid(np.array(values)) == expected
