"""``run_evaluate``: read the inputs, evaluate in this process or on Ray, write the outputs.

Small runs are evaluated in this process; large ones on Ray (:mod:`detbatch.evaluate.distributed`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from detbatch.errors import InputError
from detbatch.evaluate.config import EvaluateConfig
from detbatch.evaluate.distributed import evaluate_ray
from detbatch.evaluate.inputs import DETECTION_COLUMNS, Pairing, Run, load_ground_truth, open_run, pair_images, paired_detections, read_table
from detbatch.evaluate.metric import Metric, detection_counts, metric_for
from detbatch.evaluate.outputs import category_names, metrics_dict, write_outputs
from detbatch.evaluate.slicing import image_slices
from detbatch.metrics.coco import GroundTruth
from detbatch.metrics.grouping import accumulate_by_category
from detbatch.runtime import peak_rss_mib

logger = logging.getLogger(__name__)


def evaluate_local(
    run: Run, pairing: Pairing, gt: GroundTruth, metric: Metric, config: EvaluateConfig
) -> tuple[Any, dict[str, int], dict[str, Any]]:
    """The metric's result, the detection counts and the execution record of metrics.json, in this process."""
    dt, unpaired = paired_detections(read_table(run.fs, run.detection_files, list(DETECTION_COLUMNS)), pairing)
    counts = detection_counts(gt, dt, unpaired)
    records = metric.match(gt, dt)
    gt_counts = metric.count(gt)
    result = metric.combine(gt.category_ids, gt_counts, accumulate_by_category(records, gt.category_ids, gt_counts, metric.accumulate))
    if metric.confusion is not None:
        result = replace(result, confusion=metric.confusion(gt, dt, result))
    return result, counts, {"engine": "local", "peak_rss_mib_driver": peak_rss_mib()}


def run_evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """Evaluate a detect run; write ``metrics.json``, ``report.md``, ``pr_curves.png`` under ``config.out``.

    Returns the dict written to ``metrics.json``. Raises ``ValueError`` (a
    :class:`detbatch.config.ConfigError` for an unset ``detections``, ``ground_truth`` or ``out``) or
    :class:`detbatch.storage.StorageError` for inputs that cannot be evaluated, naming the fix.
    """
    start = time.perf_counter()
    config.require_inputs()
    coco_ds, label_problems = load_ground_truth(config.ground_truth, config.annotations_format, config.images, config.names)
    gt = coco_ds.gt
    run = open_run(config.detections)
    complete = run.info is not None
    if not complete and not config.allow_incomplete:
        raise InputError(
            f"{config.detections}: the detect run is not finished (no run.json), so its images are not all "
            f"there; finish it (rerun the same detect command), or pass --allow-incomplete to evaluate what it "
            f"holds so far"
        )
    pairing = pair_images(run, coco_ds, gt, config.pair_by)
    if config.image_set == "run":
        gt = gt.select_images(pairing.gt_with_run)
    slices = image_slices(config.slice_by, run, pairing, gt, config.slice_metadata) if config.slice_by and config.metric == "coco" else None
    metric = metric_for(config, slices)
    use_ray = config.use_ray if config.use_ray is not None else run.detection_bytes > config.local_max_bytes
    evaluate = evaluate_ray if use_ray and run.detection_files else evaluate_local
    result, counts, execution = evaluate(run, pairing, gt, metric, config)

    names = category_names(coco_ds.category_names)
    metrics = metrics_dict(config, result, names)
    metrics["pairing"] = pairing.counts | counts
    metrics["ground_truth"] = coco_ds.counts() | ({"label_problems": label_problems} if label_problems else {})
    metrics["complete"] = complete
    metrics["inputs"] = {"detections": config.detections, "ground_truth": config.ground_truth, "image_set": config.image_set}
    metrics["execution"] = execution | {"seconds": round(time.perf_counter() - start, 3)}
    write_outputs(config, metrics, result, names)
    logger.info("evaluation written to %s", config.out)
    return metrics
