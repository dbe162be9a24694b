"""Human-readable views of an evaluation's metrics dict: pycocotools' summary lines, report.md, PR curves."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from detbatch.metrics.coco import RECALL_THRESHOLDS
from detbatch.metrics.coco_reduce import STAT_KEYS, STAT_SPECS


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """The lines pycocotools' ``summarize()`` prints (coco), or the two VOC means (voc)."""
    if metrics.get("metric") == "voc":
        return [
            " Pascal VOC mean AP  @[ IoU>0.50 | all-point ] = {:0.3f}".format(metrics["mAP"]),
            " Pascal VOC mean AP  @[ IoU>0.50 | 11-point  ] = {:0.3f}".format(metrics["mAP_11point"]),
        ]
    lines = []
    for key, (ap, iou, area, max_det) in zip(STAT_KEYS, STAT_SPECS):
        title, kind = ("Average Precision", "(AP)") if ap else ("Average Recall", "(AR)")
        iou_str = "0.50:0.95" if iou is None else f"{iou:0.2f}"
        lines.append(
            " {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}".format(
                title, kind, iou_str, area, max_det, metrics[key]
            )
        )
    return lines


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "—" if value == -1 else f"{value:.3f}"
    return str(value)


def _flat(counts: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"a": {"b": 1}}`` as ``[("a.b", 1)]``."""
    out = []
    for k, v in counts.items():
        out += _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(prefix + k, v)]
    return out


def report_markdown(metrics: dict[str, Any]) -> str:
    """report.md: the summary, the pairing and ground-truth counts, and the per-category table sorted by AP
    (descending; categories without ground truth last)."""
    voc = metrics.get("metric") == "voc"
    inputs = metrics.get("inputs", {})
    out = [
        f"# Evaluation ({'Pascal VOC' if voc else 'COCO ' + metrics.get('iou_type', 'bbox')})",
        "",
        f"- detections: `{inputs.get('detections', '?')}`",
        f"- ground truth: `{inputs.get('ground_truth', '?')}`",
        *([] if metrics.get("complete", True) else
          ["", "**The detect run is not finished** (no `run.json`): these numbers cover only what it had committed."]),
        "",
        "```",
        *summary_lines(metrics),
        "```",
        "",
        "## Pairing",
        "",
        "| count | value |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in metrics.get("pairing", {}).items()),
        "",
        *(["## Ground truth", "", "| count | value |", "| --- | --- |",
           *(f"| {k} | {v} |" for k, v in _flat(metrics["ground_truth"])), ""] if "ground_truth" in metrics else []),
        "## Per category",
        "",
    ]
    cols = ["AP", "AP_11point"] if voc else ["AP", "AP50", "AP75", "AR100"]
    cols += ["num_gt", "num_detections"]
    out += ["| category | id | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    rows = sorted(metrics["per_category"].items(), key=lambda kv: (kv[1]["AP"] == -1, -kv[1]["AP"], kv[0]))
    for name, row in rows:
        out.append(f"| {name} | {row['category_id']} | " + " | ".join(_cell(row[c]) for c in cols) + " |")
    return "\n".join(out) + "\n"


def pr_curves_png(panels: list[tuple[str, dict[str, np.ndarray]]]) -> bytes:
    """A PNG of precision/recall curves, one panel per ``(title, {label: precision [R]})``, each curve
    sampled at ``RECALL_THRESHOLDS``; the first label of a panel is drawn bold (the overall curve)."""
    # The object API with the Agg canvas: no pyplot state, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6 * len(panels), 5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels):
        for i, (label, precision) in enumerate(curves.items()):
            ax.plot(RECALL_THRESHOLDS, precision, label=label, linewidth=2.5 if i == 0 else 1.2)
        ax.set(title=title, xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
