"""The Ray map/reduce of detbatch.evaluate gives exactly the result of the evaluation in one process."""

from __future__ import annotations

import pytest

from detbatch import storage
from detbatch.evaluate import EvaluateConfig, run_evaluate

from tests.evaluate.runs import setup_run, without_execution


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["coco", "voc"])
def test_ray_equals_local(ray_cluster, s3_bucket, metric):
    _, _, gt_uri, run = setup_run(s3_bucket, files=5)
    # With the diagnostics (default) and slices: the confusion stage and the slices' reduce on Ray too.
    base = EvaluateConfig(detections=run, ground_truth=gt_uri, out=f"{s3_bucket}/local", metric=metric, slice_by=["num_objects", "status"])
    local = run_evaluate(base)
    # A few buckets and read tasks, so that images spread over buckets and files over tasks.
    size = sum(storage.filesystem(run).du(storage.resolve(run)[1] + "/detections", total=False).values())
    update = {"use_ray": True, "rows_per_bucket": size // 20 // 4, "bytes_per_read_task": size // 3, "out": f"{s3_bucket}/ray"}
    distributed = run_evaluate(base.model_copy(update=update))
    assert distributed["execution"]["engine"] == "ray" and distributed["execution"]["buckets"] > 1
    assert distributed["execution"]["read_tasks"] > 1
    assert without_execution(distributed) == without_execution(local)


def test_read_tasks_keep_every_file_once_in_order_within_the_byte_budget():
    from detbatch.evaluate.distributed import read_tasks
    from detbatch.evaluate.inputs import Run

    sizes = {f"f{i}": s for i, s in enumerate([5, 5, 5, 12, 1, 1, 9])}
    run = Run("mem://run", None, list(sizes), sizes, [], None, 0)
    tasks = read_tasks(run, 10)
    assert [f for t in tasks for f in t] == list(sizes)
    assert tasks == [["f0", "f1"], ["f2"], ["f3"], ["f4", "f5"], ["f6"]]  # a file over the budget is a task alone


def test_balanced_shards_spread_the_heaviest_categories():
    import numpy as np

    from detbatch.evaluate.distributed import balanced_shards

    weights = np.array([1.0, 100.0, 3.0, 90.0, 2.0, 80.0])
    shard_of = balanced_shards(weights, 3)
    assert sorted(shard_of[[1, 3, 5]].tolist()) == [0, 1, 2]  # the three heavy ones on three shards
    assert shard_of.tolist() == [2, 0, 2, 1, 2, 2]  # the light ones fill the lightest shard
