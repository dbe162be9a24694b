"""``detbatch evaluate``: a detect run against COCO ground truth, COCO mAP or Pascal VOC AP.

The maths is :mod:`detbatch.metrics`; this module reads the inputs, pairs images, moves batches, and
writes ``metrics.json``, ``report.md`` and ``pr_curves.png``. Small runs are evaluated in this process.
Large ones run on Ray as a map/reduce in three stages of tasks (docs/evaluate.md):

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

import json
import logging
import math
import posixpath
import re
import resource
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import pydantic

from detbatch import storage
from detbatch.errors import InputError
from detbatch.metrics import coco, coco_reduce, voc
from detbatch.metrics.coco import Detections, GroundTruth, MatchRecords, evaluated_detections
from detbatch.metrics.coco_json import CocoDataset, NotCocoError, read_coco_json
from detbatch.metrics.pairing import pair_file_names
from detbatch.metrics.report import pr_curves_png, report_markdown, summary_lines

logger = logging.getLogger(__name__)

DETECTION_COLUMNS = ("image_id", "category_id", "score", "x_min", "y_min", "x_max", "y_max")
# detect's part names (detbatch.detect.sink): UNIT-START-END[-last].parquet, the same in detections/ and images/.
_PART_NAME = re.compile(r"^\d{8}-\d{7,}-\d{7,}(-last)?\.parquet$")

__all__ = ["EvaluateConfig", "run_evaluate", "summary_lines"]


class EvaluateConfig(pydantic.BaseModel, extra="forbid"):
    """What to evaluate and where to write it."""

    detections: str  # a detect output folder (RUN/detections/*.parquet, RUN/run.json), any fsspec URI
    ground_truth: str  # a COCO instances JSON, local or URI
    out: str  # folder for metrics.json, report.md, pr_curves.png
    metric: Literal["coco", "voc"] = "coco"
    iou_type: Literal["bbox"] = "bbox"
    ray_address: str | None = None
    use_ray: bool | None = None  # None: Ray when the detections exceed local_max_bytes
    # Parquet bytes up to which `use_ray=None` evaluates in this process (~10M detections).
    local_max_bytes: int = pydantic.Field(256 * 2**20, gt=0)
    # "auto": by image_id when the detect run had a COCO manifest (run.json), else by file name.
    pair_by: Literal["auto", "image_id", "file_name"] = "auto"
    # "ground_truth": every ground-truth image counts, as pycocotools; "run": only those the run paired.
    image_set: Literal["ground_truth", "run"] = "ground_truth"
    voc_plus_one: bool = False  # VOC devkit's +1 pixel in widths and areas (integer pixel boxes)
    plot_categories: int = pydantic.Field(5, ge=0)  # categories with most ground truth in pr_curves.png
    # Ray: detections per matching task, and Parquet bytes per reading task.
    rows_per_bucket: int = pydantic.Field(1_000_000, gt=0)
    bytes_per_read_task: int = pydantic.Field(64 * 2**20, gt=0)


@dataclass(frozen=True)
class _Metric:
    match: Callable[[GroundTruth, Detections], MatchRecords]
    count: Callable[[GroundTruth], np.ndarray]
    accumulate: Callable[[MatchRecords, np.ndarray], tuple[Any, ...]]
    combine: Callable[[np.ndarray, np.ndarray, dict[int, tuple[Any, ...]]], Any]


def _metric(config: EvaluateConfig) -> _Metric:
    metrics = {
        "coco": _Metric(coco.match_images, coco.count_ground_truth, coco_reduce.accumulate_category, coco_reduce.combine),
        "voc": _Metric(
            lambda gt, dt: voc.match_images_voc(gt, dt, config.voc_plus_one),
            voc.count_ground_truth_voc,
            voc.accumulate_category_voc,
            voc.combine_voc,
        ),
    }
    return metrics[config.metric]


# ---------------------------------------------------------------------------------------------- inputs


def _load_ground_truth(uri: str) -> CocoDataset:
    storage.check_readable(uri)
    try:
        return read_coco_json(storage.read_bytes(uri))
    except NotCocoError as e:
        raise InputError(
            f"{uri}: not COCO ground truth: {e}; --ground-truth takes a COCO instances JSON "
            f"(e.g. annotations/instances_val2017.json)"
        ) from e


@dataclass(frozen=True)
class _Run:
    uri: str
    fs: Any
    detection_files: list[str]  # filesystem paths
    detection_sizes: dict[str, int]
    image_files: list[str]
    info: dict[str, Any] | None  # run.json
    uncommitted: int  # detection files left out: detect's crash debris (no images file of that name)

    @property
    def detection_bytes(self) -> int:
        return sum(self.detection_sizes.values())


def _open_run(uri: str) -> _Run:
    storage.check_readable(uri)
    fs, path = storage.resolve(uri)
    info = None
    try:
        info = json.loads(storage.read_text(storage.join(uri, "run.json")))
    except FileNotFoundError:
        pass
    detections = fs.glob(f"{path}/detections/*.parquet", detail=True)
    images = sorted(fs.glob(f"{path}/images/*.parquet"))
    if info is None and not detections:
        raise InputError(
            f"{uri}: not a detect output (no detections/*.parquet and no run.json); --detections takes "
            f"the folder `detbatch detect --out` wrote"
        )
    if not detections:
        logger.warning("%s: no detections/*.parquet; every ground truth counts as missed", uri)
    # detect writes each detections part, then the images part of the same name as its commit; a part
    # without its commit is debris of an interrupted attempt and must not be counted.
    committed = {posixpath.basename(f) for f in images}
    debris = {f for f in detections if _PART_NAME.match(posixpath.basename(f)) and posixpath.basename(f) not in committed}
    if debris:
        logger.warning("%s: %d detection files have no images file (uncommitted); left out", uri, len(debris))
    sizes = {f: int(detections[f].get("size") or 0) for f in sorted(detections) if f not in debris}
    return _Run(uri, fs, list(sizes), sizes, images, info, len(debris))


def _read_table(fs: Any, files: list[str], columns: list[str]) -> Any:
    """A pyarrow Table of ``columns`` from Parquet ``files``, cast to the contract's types."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    types = {
        "image_id": pa.int64(), "category_id": pa.int64(), "score": pa.float32(), "uri": pa.string(),
        "x_min": pa.float32(), "y_min": pa.float32(), "x_max": pa.float32(), "y_max": pa.float32(),
        "status": pa.string(),
    }  # fmt: skip
    schema = pa.schema([(c, types[c]) for c in columns])
    if not files:
        return schema.empty_table()
    return pads.dataset(files, schema=schema, filesystem=fs, format="parquet").to_table(columns=columns)


@dataclass(frozen=True)
class _Pairing:
    """Run image id -> ground-truth image id (``run_ids`` sorted), the ground-truth images that have a
    run image (``gt_with_run``), and the counts for metrics.json."""

    run_ids: np.ndarray
    gt_ids: np.ndarray
    counts: dict[str, Any]
    gt_with_run: np.ndarray | None = None

    def map(self, image_id: np.ndarray) -> np.ndarray:
        """Ground-truth image ids for run image ids, -1 where unpaired."""
        if len(self.run_ids) == 0:
            return np.full(len(image_id), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.run_ids, image_id), len(self.run_ids) - 1)
        return np.where(self.run_ids[at] == image_id, self.gt_ids[at], -1)


def _pair(run: _Run, coco_ds: CocoDataset, gt: GroundTruth, pair_by: str) -> _Pairing:
    if pair_by == "auto":
        if run.info is None:
            raise InputError(
                f"{run.uri}: no run.json, so it is unknown whether image ids are ground-truth ids; finish "
                f"the detect run, or choose pairing explicitly (pair_by='image_id' or 'file_name')"
            )
        pair_by = "image_id" if (run.info.get("input") or {}).get("manifest") else "file_name"
    if run.image_files:
        images = _read_table(run.fs, run.image_files, ["image_id", "uri", "status"])
    else:  # no image table: the images that have detections
        images = _read_table(run.fs, run.detection_files, ["image_id", "uri"]).group_by(["image_id", "uri"]).aggregate([])
    run_image = images.column("image_id").to_numpy()
    status = images.column("status").to_pylist() if "status" in images.column_names else ["ok"] * len(run_image)
    counts: dict[str, Any] = {"mode": pair_by}
    if pair_by == "image_id":
        run_ids = gt_ids = gt.image_ids
    else:
        files = dict(zip(coco_ds.image_ids.tolist(), coco_ds.file_names))
        gt_names = [files[i] for i in gt.image_ids.tolist()]
        run_input = (run.info or {}).get("input") or {}
        root = run_input.get("root") or run_input.get("uri")  # detect records the listing root
        result = pair_file_names(images.column("uri").to_pylist(), root, gt_names)
        paired = result.gt_index >= 0
        order = np.argsort(run_image[paired])
        run_ids, gt_ids = run_image[paired][order], gt.image_ids[result.gt_index[paired]][order]
        counts |= {"paired_by_exact_name": result.exact, "paired_by_basename": result.basename, "ambiguous_names": result.ambiguous}
    mapped = _Pairing(run_ids, gt_ids, counts).map(run_image)
    run_paired = mapped >= 0
    gt_paired = np.isin(gt.image_ids, mapped)
    pairing = _Pairing(run_ids, gt_ids, counts, gt.image_ids[gt_paired])
    counts |= {
        "detection_files_uncommitted": run.uncommitted,
        "run_images": int(len(run_image)),
        "run_images_error": int(sum(s == "error" for s in status)),
        "run_images_paired": int(run_paired.sum()),
        "run_images_unpaired": int((~run_paired).sum()),
        "gt_images": int(len(gt.image_ids)),
        "gt_images_paired": int(gt_paired.sum()),
        "gt_images_unpaired": int((~gt_paired).sum()),
    }
    return pairing


def _detections(table: Any, pairing: _Pairing) -> tuple[Detections, int]:
    """Detections with ground-truth image ids (unpaired rows dropped), and the number dropped."""
    image_id = pairing.map(table.column("image_id").to_numpy())
    paired = image_id >= 0
    boxes = np.stack([table.column(c).to_numpy() for c in ("x_min", "y_min", "x_max", "y_max")], axis=1)
    dt = Detections(image_id, table.column("category_id").to_numpy(), table.column("score").to_numpy(), boxes)
    return (dt if paired.all() else dt.take(paired)), int((~paired).sum())


def _detection_counts(gt: GroundTruth, dt: Detections, unpaired: int) -> dict[str, int]:
    _, dropped = evaluated_detections(gt, dt)
    return {
        "detections": len(dt) + unpaired,
        "detections_paired": len(dt),
        "detections_unpaired": unpaired,
        "detections_unknown_category": dropped["unknown_category"],
        "detections_non_finite": dropped["non_finite"],
        "detections_evaluated": len(dt) - dropped["unknown_category"] - dropped["non_finite"],
    }


# ---------------------------------------------------------------------------------------- local / Ray


def proc_status_mib(field: str, pid: int | str = "self") -> float | None:
    """A memory line (``VmHWM``, ``RssAnon``, ...) of /proc/PID/status (Linux), MiB; None elsewhere."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_rss_mib() -> float:
    """Peak resident memory of this process, MiB (in a Ray worker: object-store pages it touched too)."""
    # VmHWM starts afresh at exec; ru_maxrss keeps the peak of the process that forked this one.
    peak = proc_status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _PrivateMemoryPeak:
    """Peak private (anonymous) resident memory while the ``with`` block runs, sampled every 50 ms.

    A Ray worker's VmHWM also counts the shared object-store pages of every object it ever read or wrote;
    its private memory is what a task itself needs.
    """

    def __init__(self) -> None:
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak_mib = max(self.peak_mib, proc_status_mib("RssAnon") or 0.0)
            if self._stop.wait(0.05):
                return

    def __enter__(self) -> _PrivateMemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, proc_status_mib("RssAnon") or 0.0)


def _evaluate_local(
    run: _Run, pairing: _Pairing, gt: GroundTruth, metric: _Metric, config: EvaluateConfig
) -> tuple[Any, dict[str, int], dict[str, Any]]:
    dt, unpaired = _detections(_read_table(run.fs, run.detection_files, list(DETECTION_COLUMNS)), pairing)
    counts = _detection_counts(gt, dt, unpaired)
    records = metric.match(gt, dt)
    gt_counts = metric.count(gt)
    result = metric.combine(gt.category_ids, gt_counts, _accumulate_shard(metric, records, gt.category_ids, gt_counts))
    return result, counts, {"engine": "local", "peak_rss_mib_driver": _peak_rss_mib()}


def _accumulate_shard(metric: _Metric, records: MatchRecords, category_ids: np.ndarray, gt_counts: np.ndarray) -> dict[int, tuple[Any, ...]]:
    """Per category of ``records``: the metric's accumulation plus the category's detection count."""
    k_of = np.searchsorted(category_ids, records.category_id)
    order = np.argsort(k_of, kind="stable")
    bounds = np.searchsorted(k_of[order], np.arange(len(category_ids) + 1))
    parts = {}
    for k in np.flatnonzero(np.diff(bounds)):
        rows = order[bounds[k] : bounds[k + 1]]
        parts[int(category_ids[k])] = (*metric.accumulate(records.take(rows), gt_counts[k]), len(rows))
    return parts


def _read_tasks(run: _Run, bytes_per_task: int) -> list[list[str]]:
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


def _task_stats(started: tuple[float, float], memory: _PrivateMemoryPeak, **extra: Any) -> dict[str, Any]:
    """Wall and CPU seconds since ``started`` (``(perf_counter, process_time)``), and peak memory."""
    return {
        "seconds": time.perf_counter() - started[0],
        "cpu_seconds": time.process_time() - started[1],
        "peak_rss_mib": _peak_rss_mib(),
        "peak_private_mib": memory.peak_mib,
        **extra,
    }


def _read_and_split(run_uri: str, files: list[str], pairing: _Pairing, gt_image_ids: np.ndarray, buckets: int) -> list[Any]:
    """Stage 1: read files, pair, split into ``buckets`` tables of whole images; last: stats."""
    import pyarrow as pa

    started = time.perf_counter(), time.process_time()
    with _PrivateMemoryPeak() as memory:
        fs, _ = storage.resolve(run_uri)
        table = _read_table(fs, files, list(DETECTION_COLUMNS))
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


def _match_bucket(metric: _Metric, gt: GroundTruth, shard_of: np.ndarray, shards: int, *tables: Any) -> list[Any]:
    """Stage 2: match one bucket's images; split the records into ``shards`` of whole categories
    (``shard_of[k]`` for ``gt.category_ids[k]``); last: detection counts and stats."""
    import pyarrow as pa

    started = time.perf_counter(), time.process_time()
    with _PrivateMemoryPeak() as memory:
        dt, _ = _detections(pa.concat_tables(tables), _Pairing(gt.image_ids, gt.image_ids, {}))
        counts = _detection_counts(gt, dt, 0)
        records = metric.match(gt, dt)
        del dt
        shard = shard_of[np.searchsorted(gt.category_ids, records.category_id)]
        order = np.argsort(shard, kind="stable")
        bounds = np.searchsorted(shard[order], np.arange(shards + 1))
        parts = [records.take(order[bounds[s] : bounds[s + 1]]) for s in range(shards)]
    return [*parts, _task_stats(started, memory, counts=counts)]


def _reduce_shard(metric: _Metric, category_ids: np.ndarray, gt_counts: np.ndarray, *parts: MatchRecords) -> tuple[dict[int, Any], dict[str, Any]]:
    """Stage 3: accumulate every category of one shard."""
    started = time.perf_counter(), time.process_time()
    with _PrivateMemoryPeak() as memory:
        records = MatchRecords.concat([p for p in parts if len(p)])
        result = _accumulate_shard(metric, records, category_ids, gt_counts)
    return result, _task_stats(started, memory)


def _balanced_shards(weights: np.ndarray, shards: int) -> np.ndarray:
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
    }


def _evaluate_ray(
    run: _Run, pairing: _Pairing, gt: GroundTruth, metric: _Metric, config: EvaluateConfig
) -> tuple[Any, dict[str, int], dict[str, Any]]:
    import ray

    from detbatch.runtime import init_ray

    init_ray(config.ray_address)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    # ~20 bytes per detection on disk: size the buckets from the Parquet bytes.
    buckets = max(1, min(len(gt.image_ids), math.ceil(run.detection_bytes / 20 / config.rows_per_bucket)))
    shards = max(1, min(len(gt.category_ids), 4 * cpus))
    gt_counts = metric.count(gt)
    shard_of = _balanced_shards(gt_counts[:, 0].astype(np.float64), shards)
    read_tasks = _read_tasks(run, config.bytes_per_read_task)
    logger.info("evaluating on Ray: %d read tasks, %d buckets, %d category shards", len(read_tasks), buckets, shards)

    pairing_ref, gt_ids_ref = ray.put(pairing), ray.put(gt.image_ids)
    read = ray.remote(_read_and_split).options(num_returns=buckets + 1)
    split = [read.remote(run.uri, files, pairing_ref, gt_ids_ref, buckets) for files in read_tasks]
    read_stats = [s[buckets] for s in split]
    match = ray.remote(_match_bucket).options(num_returns=shards + 1)
    matched = []
    for b, bucket_gt in enumerate(gt.split_images(buckets)):
        matched.append(match.remote(metric, ray.put(bucket_gt), shard_of, shards, *[s[b] for s in split]))
    del split  # the match tasks hold what they need; the rest is freed as they finish
    match_stats = [m[shards] for m in matched]
    reduce_ = ray.remote(_reduce_shard)
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
    execution = {
        "engine": "ray",
        "cpus": cpus,
        "read_tasks": len(read_tasks),
        "buckets": buckets,
        "category_shards": shards,
        "stages": stages,
        "peak_rss_mib_driver": round(_peak_rss_mib(), 1),
        "peak_rss_mib_worker": max(stage["peak_rss_mib"] for stage in stages.values()),
        "peak_private_mib_task": max(stage["peak_private_mib"] for stage in stages.values()),
    }
    return result, counts, execution


# ------------------------------------------------------------------------------------------- outputs


def _category_names(names: dict[int, str]) -> dict[int, str]:
    """Names as metrics.json keys: a name shared by several categories gets its id appended."""
    seen: dict[str, int] = {}
    for n in names.values():
        seen[n] = seen.get(n, 0) + 1
    return {i: (n if seen[n] == 1 else f"{n} ({i})") for i, n in names.items()}


def _metrics_dict(config: EvaluateConfig, result: Any, names: dict[int, str]) -> dict[str, Any]:
    per_category = {names[row["category_id"]]: row for row in result.per_category()}
    if config.metric == "voc":
        head = {"metric": "voc", "mAP": result.mean_ap, "mAP_11point": result.mean_ap11}
    else:
        head = {"metric": "coco", "iou_type": config.iou_type, **result.stats_dict()}
    return {**head, "per_category": per_category}


def _pr_panels(config: EvaluateConfig, result: Any, names: dict[int, str]) -> list[tuple[str, dict[str, np.ndarray]]]:
    top = [k for k in np.argsort(-result.num_gt, kind="stable")[: config.plot_categories] if result.num_gt[k] > 0]
    if config.metric == "voc":
        precisions = {"IoU>0.50": result.precision}  # [R, K]
    else:
        t50, t75 = (int(np.flatnonzero(coco.IOU_THRESHOLDS == x)[0]) for x in (0.5, 0.75))
        p = result.precision[:, :, :, coco.AREA_LABELS.index("all"), coco.MAX_DETECTIONS.index(100)]
        precisions = {"IoU=0.50": p[t50], "IoU=0.75": p[t75]}
    panels = []
    for title, prec in precisions.items():
        valid = prec > -1
        overall = np.where(valid.any(1), np.where(valid, prec, 0).sum(1) / np.maximum(valid.sum(1), 1), 0)
        curves = {"all categories": overall} | {names[int(result.category_ids[k])]: prec[:, k] for k in top}
        panels.append((f"precision/recall, {title}, area=all, maxDets=100", curves))
    return panels


def run_evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """Evaluate a detect run; write ``metrics.json``, ``report.md``, ``pr_curves.png`` under ``config.out``.

    Returns the dict written to ``metrics.json``. Raises ``ValueError`` or
    :class:`detbatch.storage.StorageError` for inputs that cannot be evaluated, naming the fix.
    """
    start = time.perf_counter()
    coco_ds = _load_ground_truth(config.ground_truth)
    gt = coco_ds.gt
    run = _open_run(config.detections)
    pairing = _pair(run, coco_ds, gt, config.pair_by)
    if config.image_set == "run":
        gt = gt.select_images(pairing.gt_with_run)
    metric = _metric(config)
    use_ray = config.use_ray if config.use_ray is not None else run.detection_bytes > config.local_max_bytes
    evaluate = _evaluate_ray if use_ray and run.detection_files else _evaluate_local
    result, counts, execution = evaluate(run, pairing, gt, metric, config)

    names = _category_names(coco_ds.category_names)
    metrics = _metrics_dict(config, result, names)
    metrics["pairing"] = pairing.counts | counts
    metrics["inputs"] = {"detections": config.detections, "ground_truth": config.ground_truth, "image_set": config.image_set}
    metrics["execution"] = execution | {"seconds": round(time.perf_counter() - start, 3)}
    storage.write_text(storage.join(config.out, "metrics.json"), json.dumps(metrics, indent=2) + "\n")
    storage.write_text(storage.join(config.out, "report.md"), report_markdown(metrics))
    storage.write_bytes(storage.join(config.out, "pr_curves.png"), pr_curves_png(_pr_panels(config, result, names)))
    logger.info("evaluation written to %s", config.out)
    return metrics
