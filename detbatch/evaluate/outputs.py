"""What an evaluation writes under ``out``: ``metrics.json``, ``report.md``, ``pr_curves.png``, and with the
diagnostics ``thresholds.json``, ``thresholds.png``, ``confusion.png``, ``errors.png`` (docs/evaluate.md)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from detbatch import storage
from detbatch.evaluate.config import EvaluateConfig
from detbatch.metrics import coco
from detbatch.metrics.report import confusion_png, errors_png, pr_curves_png, report_markdown, thresholds_png
from detbatch.metrics.thresholds import confusion_score_thresholds, score_thresholds, thresholds_dict
from detbatch.metrics.tide import errors_dict


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
    return {**head, "per_category": per_category, **diagnostics_dict(config, result, names)}


def diagnostics_dict(config: EvaluateConfig, result: Any, names: dict[int, str]) -> dict[str, Any]:
    """metrics.json ``thresholds``, ``confusion`` and ``errors`` (docs/evaluate.md, "Diagnostics"), and
    ``slices``; none without them."""
    out: dict[str, Any] = {}
    if getattr(result, "thresholds", None) is not None:
        th = thresholds_dict(result.category_ids, result.thresholds)
        th["per_category"] = {names[int(k)]: {"category_id": int(k), **v} for k, v in th["per_category"].items()}
        out["thresholds"] = th
    if getattr(result, "confusion", None) is not None:
        used = confusion_score_thresholds(result.category_ids, result.thresholds, config.confusion_score_threshold)
        out["confusion"] = {
            "iou": config.confusion_iou,
            "score_threshold": "f1_optimal" if config.confusion_score_threshold is None else config.confusion_score_threshold,
            "score_thresholds": {names[int(k)]: (None if np.isinf(t) else float(t)) for k, t in zip(result.category_ids, used)},
            "labels": [names[int(k)] for k in result.category_ids] + ["background"],
            "category_ids": [int(k) for k in result.category_ids],
            "matrix": result.confusion.tolist(),
        }
    if getattr(result, "errors", None) is not None:
        out["errors"] = errors_dict(result.errors, names)
    if getattr(result, "slices", None) is not None:
        out["slices"] = result.slices
    return out


def thresholds_json(result: Any) -> dict[str, Any]:
    """thresholds.json: the F1-optimal score threshold at IoU 0.5 per category id, and the overall one as
    ``default`` (null when no threshold gives a true positive) — what detect's ``--score-threshold`` takes."""
    per, default = score_thresholds(result.category_ids, result.thresholds, 0.5)
    return {"per_category": {str(k): v for k, v in per.items()}, "default": default}


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
    if getattr(result, "thresholds", None) is not None:
        storage.write_text(storage.join(config.out, "thresholds.json"), json.dumps(thresholds_json(result), indent=2) + "\n")
        storage.write_bytes(storage.join(config.out, "thresholds.png"), thresholds_png(metrics["thresholds"]))
    if "confusion" in metrics:
        storage.write_bytes(storage.join(config.out, "confusion.png"), confusion_png(metrics["confusion"]))
    if "errors" in metrics:
        storage.write_bytes(storage.join(config.out, "errors.png"), errors_png(metrics["errors"]))
