"""What an evaluation writes under ``out``: ``metrics.json``, ``report.md``, ``pr_curves.png``
(docs/evaluate.md)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from detbatch import storage
from detbatch.evaluate.config import EvaluateConfig
from detbatch.metrics import coco
from detbatch.metrics.report import pr_curves_png, report_markdown


def category_names(names: dict[int, str]) -> dict[int, str]:
    """Names as metrics.json keys: a name shared by several categories gets its id appended."""
    seen: dict[str, int] = {}
    for n in names.values():
        seen[n] = seen.get(n, 0) + 1
    return {i: (n if seen[n] == 1 else f"{n} ({i})") for i, n in names.items()}


def metrics_dict(config: EvaluateConfig, result: Any, names: dict[int, str]) -> dict[str, Any]:
    """The metric's part of metrics.json: the summary stats and ``per_category`` (keyed by ``names``)."""
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


def write_outputs(config: EvaluateConfig, metrics: dict[str, Any], result: Any, names: dict[int, str]) -> None:
    """Write ``metrics`` as metrics.json, its report.md, and the precision/recall curves of ``result``."""
    storage.write_text(storage.join(config.out, "metrics.json"), json.dumps(metrics, indent=2) + "\n")
    storage.write_text(storage.join(config.out, "report.md"), report_markdown(metrics))
    storage.write_bytes(storage.join(config.out, "pr_curves.png"), pr_curves_png(_pr_panels(config, result, names)))
