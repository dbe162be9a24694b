"""Evaluation on Ray, for runs too large for one process: a map/reduce in three stages of tasks
(docs/evaluate.md).

1. read: each task reads some Parquet files, pairs their detections with ground-truth images and splits
   them into buckets of whole images (ground-truth image index modulo the bucket count);
2. match: one task per bucket matches its images (:func:`~detbatch.metrics.match_images`) and splits
   the compact records into shards of whole categories;
3. reduce: one task per shard sorts and accumulates each of its categories.

No process holds all detections: each task holds one bucket or one shard, the driver only the ground truth
and per-category results. Every stage keeps images and categories whole, so the result does not depend
on how the Parquet is split or ordered.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import Any

import numpy as np

from detbatch import storage
from detbatch.evaluate.config import EvaluateConfig
from detbatch.evaluate.inputs import DETECTION_COLUMNS, Pairing, Run, paired_detections, read_table
from detbatch.evaluate.metric import Metric, detection_counts
from detbatch.metrics.coco import GroundTruth, MatchRecords
from detbatch.metrics.grouping import accumulate_by_category
from detbatch.runtime import PrivateMemoryPeak, init_ray, peak_rss_mib

logger = logging.getLogger(__name__)


def read_tasks(run: Run, bytes_per_task: int) -> list[list[str]]:
    """Detection files grouped into reading tasks of about ``bytes_per_task`` each."""
    tasks: list[list[str]] = [[]]
    filled = 0
    for f, size in run.detection_sizes.items():
        if tasks[-1] and filled + size > bytes_per_task:
            tasks.append([])
            filled = 0
        tasks[-1].append(f)
        filled += size
    return [t for t in tasks if t]


def _task_stats(started: tuple[float, float], memory: PrivateMemoryPeak, **extra: Any) -> dict[str, Any]:
    """Wall and CPU seconds since ``started`` (``(perf_counter, process_time)``), and peak memory."""
    return {
        "seconds": time.perf_counter() - started[0],
        "cpu_seconds": time.process_time() - started[1],
        "peak_rss_mib": peak_rss_mib(),
        "peak_private_mib": memory.peak_mib,
        "private_rise_mib": memory.peak_mib - memory.start_mib,
        **extra,
    }


def read_and_split(run_uri: str, files: list[str], pairing: Pairing, gt_image_ids: np.ndarray, buckets: int) -> list[Any]:
    """Stage 1: read files, pair, split into ``buckets`` tables of whole images; last: stats."""
    import pyarrow as pa

    started = time.perf_counter(), time.process_time()
    with PrivateMemoryPeak() as memory:
        fs, _ = storage.resolve(run_uri)
        table = read_table(fs, files, list(DETECTION_COLUMNS))
        image_id = pairing.map(table.column("image_id").to_numpy())
        paired = image_id >= 0
        column = table.schema.get_field_index("image_id")
        table = table.filter(pa.array(paired)).set_column(column, "image_id", pa.array(image_id[paired]))
        bucket = np.searchsorted(gt_image_ids, table.column("image_id").to_numpy()) % buckets
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(buckets + 1))
        table = table.take(pa.array(order))
        parts = [table.slice(bounds[b], bounds[b + 1] - bounds[b]) for b in range(buckets)]
    return [*parts, _task_stats(started, memory, detections_unpaired=int((~paired).sum()))]


def match_bucket(metric: Metric, gt: GroundTruth, shard_of: np.ndarray, shards: int, *tables: Any) -> list[Any]:
    """Stage 2: match one bucket's images; split the records into ``shards`` of whole categories
    (``shard_of[k]`` for ``gt.category_ids[k]``); last: detection counts and stats."""
    import pyarrow as pa

    started = time.perf_counter(), time.process_time()
    with PrivateMemoryPeak() as memory:
        # The read stage already put ground-truth ids in image_id: pair each id with itself.
        dt, _ = paired_detections(pa.concat_tables(tables), Pairing(gt.image_ids, gt.image_ids, {}))
        counts = detection_counts(gt, dt, 0)
        records = metric.match(gt, dt)
        del dt
        shard = shard_of[np.searchsorted(gt.category_ids, records.category_id)]
        order = np.argsort(shard, kind="stable")
        bounds = np.searchsorted(shard[order], np.arange(shards + 1))
        parts = [records.take(order[bounds[s] : bounds[s + 1]]) for s in range(shards)]
    return [*parts, _task_stats(started, memory, counts=counts)]


def reduce_shard(metric: Metric, category_ids: np.ndarray, gt_counts: np.ndarray, *parts: MatchRecords) -> tuple[dict[int, Any], dict[str, Any]]:
    """Stage 3: accumulate every category of one shard."""
    started = time.perf_counter(), time.process_time()
    with PrivateMemoryPeak() as memory:
        records = MatchRecords.concat([p for p in parts if len(p)])
        result = accumulate_by_category(records, category_ids, gt_counts, metric.accumulate)
    return result, _task_stats(started, memory)


def confuse_bucket(metric: Metric, gt: GroundTruth, result: Any, *tables: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Stage 4 (diagnostics): the confusion matrix of one bucket's images, at the reduce's thresholds."""
    import pyarrow as pa

    started = time.perf_counter(), time.process_time()
    with PrivateMemoryPeak() as memory:
        dt, _ = paired_detections(pa.concat_tables(tables), Pairing(gt.image_ids, gt.image_ids, {}))
        matrix = metric.confusion(gt, dt, result)
    return matrix, _task_stats(started, memory)


def balanced_shards(weights: np.ndarray, shards: int) -> np.ndarray:
    """Shard of each category: heaviest first onto the lightest shard (weights: ground-truth counts,
    a proxy for the number of records)."""
    load = np.zeros(shards)
    shard_of = np.zeros(len(weights), dtype=np.int64)
    for k in np.argsort(-weights, kind="stable"):
        shard_of[k] = int(np.argmin(load))
        load[shard_of[k]] += weights[k] + 1
    return shard_of


def _stage_summary(stats: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "tasks": len(stats),
        "task_seconds": round(sum(s["seconds"] for s in stats), 2),
        "task_cpu_seconds": round(sum(s["cpu_seconds"] for s in stats), 2),
        "peak_rss_mib": round(max((s["peak_rss_mib"] for s in stats), default=0.0), 1),
        "peak_private_mib": round(max((s["peak_private_mib"] for s in stats), default=0.0), 1),
        "private_rise_mib": round(max((s["private_rise_mib"] for s in stats), default=0.0), 1),
    }


def evaluate_ray(
    run: Run, pairing: Pairing, gt: GroundTruth, metric: Metric, config: EvaluateConfig
) -> tuple[Any, dict[str, int], dict[str, Any]]:
    """The metric's result, the detection counts and the execution record of metrics.json, from the three stages."""
    import ray

    init_ray(config.ray_address)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    # ~20 bytes per detection on disk: size the buckets from the Parquet bytes.
    buckets = max(1, min(len(gt.image_ids), math.ceil(run.detection_bytes / 20 / config.rows_per_bucket)))
    shards = max(1, min(len(gt.category_ids), 4 * cpus))
    gt_counts = metric.count(gt)
    shard_of = balanced_shards(gt_counts[:, 0].astype(np.float64), shards)
    tasks = read_tasks(run, config.bytes_per_read_task)
    logger.info("evaluating on Ray: %d read tasks, %d buckets, %d category shards", len(tasks), buckets, shards)

    pairing_ref, gt_ids_ref = ray.put(pairing), ray.put(gt.image_ids)
    read = ray.remote(read_and_split).options(num_returns=buckets + 1)
    split = [read.remote(run.uri, files, pairing_ref, gt_ids_ref, buckets) for files in tasks]
    read_stats = [s[buckets] for s in split]
    match = ray.remote(match_bucket).options(num_returns=shards + 1)
    matched = []
    bucket_gts = [ray.put(bucket_gt) for bucket_gt in gt.split_images(buckets)]
    for b, bucket_gt in enumerate(bucket_gts):
        matched.append(match.remote(metric, bucket_gt, shard_of, shards, *[s[b] for s in split]))
    if metric.confusion is None:
        del split  # the match tasks hold what they need; the rest is freed as they finish
    match_stats = [m[shards] for m in matched]
    reduce_ = ray.remote(reduce_shard)
    reduced = [reduce_.remote(metric, gt.category_ids, gt_counts, *[m[s] for m in matched]) for s in range(shards)]
    del matched

    parts: dict[int, Any] = {}
    reduce_stats = []
    for shard_parts, stats in ray.get(reduced):
        parts |= shard_parts
        reduce_stats.append(stats)
    read_stats, match_stats = ray.get(read_stats), ray.get(match_stats)
    counts = {k: sum(s["counts"][k] for s in match_stats) for k in match_stats[0]["counts"]}
    unpaired = sum(s["detections_unpaired"] for s in read_stats)
    counts["detections"] += unpaired
    counts["detections_unpaired"] = unpaired
    result = metric.combine(gt.category_ids, gt_counts, parts)
    stages = {"read": _stage_summary(read_stats), "match": _stage_summary(match_stats), "reduce": _stage_summary(reduce_stats)}
    if metric.confusion is not None:
        # The confusion matrix needs the reduce's thresholds: a fourth stage over the same bucket pieces
        # (kept in the object store), not a second read of the Parquet.
        confuse = ray.remote(confuse_bucket).options(num_returns=2)
        result_ref = ray.put(result)
        confused = [confuse.remote(metric, bucket_gt, result_ref, *[s[b] for s in split]) for b, bucket_gt in enumerate(bucket_gts)]
        del split
        matrices = ray.get([c[0] for c in confused])
        result = replace(result, confusion=np.sum(matrices, axis=0))
        stages["confusion"] = _stage_summary(ray.get([c[1] for c in confused]))
    execution = {
        "engine": "ray",
        "cpus": cpus,
        "read_tasks": len(tasks),
        "buckets": buckets,
        "category_shards": shards,
        "stages": stages,
        "peak_rss_mib_driver": round(peak_rss_mib(), 1),
        "peak_rss_mib_worker": max(stage["peak_rss_mib"] for stage in stages.values()),
        "peak_private_mib_task": max(stage["peak_private_mib"] for stage in stages.values()),
    }
    return result, counts, execution
