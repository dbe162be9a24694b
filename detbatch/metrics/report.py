"""Human-readable views of an evaluation's metrics dict: pycocotools' summary lines, report.md, PR curves,
and with the diagnostics the confusion heatmap, the P/R/F1-by-threshold curves and the TIDE error bars."""

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
    if "thresholds" in metrics:
        out += ["", *_threshold_table(metrics["thresholds"])]
    if "confusion" in metrics:
        out += ["", *_confusion_table(metrics["confusion"])]
    if "errors" in metrics:
        out += ["", *_errors_table(metrics["errors"])]
    if "slices" in metrics:
        out += ["", "## Slices", "", "Each as pycocotools on the slice's images alone.", "",
                "| slice | images | AP | AP50 | AR100 |", "|---|---|---|---|---|"]
        out += [f"| {name} | {row['images']} | " + " | ".join(_cell(row[k]) for k in ("AP", "AP50", "AR100")) + " |"
                for name, row in metrics["slices"].items()]
    return "\n".join(out) + "\n"


def _threshold_table(thresholds: dict[str, Any]) -> list[str]:
    """The F1-optimal threshold and its precision, recall, F1 at IoU 0.50 and 0.75, overall and per category."""
    ious = list(thresholds["overall"])
    out = [
        "## Score thresholds (F1-optimal)",
        "",
        "Overall: one threshold for all categories, on a 0.001 grid; per category: exact (`thresholds.json`: IoU 0.50).",
        "",
        "| category | " + " | ".join(f"{k} @ IoU {iou}" for iou in ious for k in ("threshold", "P", "R", "F1")) + " |",
        "|---" * (1 + 4 * len(ious)) + "|",
    ]
    rows = [("**overall**", thresholds["overall"])] + sorted(thresholds["per_category"].items())
    for name, row in rows:
        cells = []
        for iou in ious:
            best = row[iou]["best"]
            cells += ["—" if best["threshold"] is None else f"{best['threshold']:.3f}"]
            cells += [f"{best[k]:.3f}" for k in ("precision", "recall", "f1")]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def _confusion_table(confusion: dict[str, Any]) -> list[str]:
    """The confusion matrix as a table: rows ground truth (or background), columns predicted (or missed)."""
    labels = confusion["labels"]
    threshold = confusion["score_threshold"]
    out = [
        "## Confusion matrix",
        "",
        f"IoU ≥ {confusion['iou']}, score threshold {'F1-optimal per category' if threshold == 'f1_optimal' else threshold}; "
        "rows: ground truth (background: detections that matched nothing), columns: predicted (background: missed).",
        "",
        "| ground truth \\ predicted | " + " | ".join(labels) + " |",
        "|---" * (len(labels) + 1) + "|",
    ]
    for label, row in zip(labels, confusion["matrix"]):
        out.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    return out


# tidecv's short names of the error types, beside detbatch's
_ERROR_LABELS = {
    "classification": "Cls", "localisation": "Loc", "both": "Both", "duplicate": "Dupe", "background": "Bkg",
    "missed": "Miss", "false_positives": "FalsePos", "false_negatives": "FalseNeg",
}  # fmt: skip


def _errors_table(errors: dict[str, Any]) -> list[str]:
    """The TIDE breakdown: per error type its count and dAP, then per category (worst AP50 first)."""
    types = list(errors["dAP"])
    main = list(errors["counts"])
    out = [
        "## Error breakdown (TIDE)",
        "",
        f"AP50 {errors['AP50']:.3f}; dAP: the AP50 gained if that error type were fixed (IoU {errors['iou']}, "
        f"background below IoU {errors['background_iou']}; docs/evaluate.md).",
        "",
        "| error | " + " | ".join(f"{e} ({_ERROR_LABELS.get(e, e)})" for e in types) + " |",
        "|---" * (len(types) + 1) + "|",
        "| count | " + " | ".join(str(errors["counts"][e]) if e in main else "—" for e in types) + " |",
        "| dAP | " + " | ".join(f"{errors['dAP'][e]:.4f}" for e in types) + " |",
        "",
        "| category | id | AP50 | " + " | ".join(f"dAP {_ERROR_LABELS.get(e, e)}" for e in types) + " |",
        "|---" * (len(types) + 3) + "|",
    ]
    rows = [(n, r) for n, r in errors["per_category"].items() if r["AP50"] is not None]
    for name, row in sorted(rows, key=lambda kv: (kv[1]["AP50"], kv[0])):
        cells = ["—" if row["dAP"][e] is None else f"{row['dAP'][e]:.3f}" for e in types]
        out.append(f"| {name} | {row['category_id']} | {row['AP50']:.3f} | " + " | ".join(cells) + " |")
    return out


def errors_png(errors: dict[str, Any]) -> bytes:
    """Bars of metrics.json ``errors``: the dAP of the six error types, and of false positives and negatives."""
    fig, (main, special) = _figure(10, 3.8, 2)
    for ax, names, colour, title in (
        (main, list(errors["counts"]), "tab:red", "main errors"),
        (special, [e for e in errors["dAP"] if e not in errors["counts"]], "tab:blue", "false positives / negatives"),
    ):
        values = [100 * errors["dAP"][e] for e in names]
        bars = ax.barh(range(len(names)), values, color=colour)
        ax.set_yticks(range(len(names)), [_ERROR_LABELS.get(e, e) for e in names])
        ax.invert_yaxis()
        ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
        ax.set(title=f"{title}, dAP (AP50 points)", xlim=(0, max([*values, 1.0]) * 1.2))
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"TIDE error breakdown, AP50 = {100 * errors['AP50']:.2f}")
    return _png(fig, {"left": 0.09, "right": 0.98, "bottom": 0.08, "top": 0.82, "wspace": 0.25})


def _figure(width: float, height: float, panels: int = 1) -> tuple[Any, Any]:
    # The object API with the Agg canvas: no pyplot state, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def _png(fig: Any, margins: dict[str, float] | None = None) -> bytes:
    """The figure as PNG bytes; laid out with ``tight_layout``, or, given ``margins`` (``subplots_adjust``'s
    keywords), with those: tight_layout draws every text once more to measure it, a third of a figure's time."""
    if margins is None:
        fig.tight_layout()
    else:
        fig.subplots_adjust(**margins)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def confusion_png(confusion: dict[str, Any]) -> bytes:
    """A heatmap of metrics.json ``confusion``, each row normalised to its total (counts written in)."""
    from matplotlib.transforms import blended_transform_factory

    matrix = np.asarray(confusion["matrix"], dtype=np.float64)
    labels = confusion["labels"]
    n = len(labels)
    # At most 12 inches: 80 COCO classes at 0.45 in each would make a 3,800-pixel square, slow to draw.
    side = min(max(5.0, 0.45 * n + 2), 12.0)
    fig, (ax,) = _figure(side, side - 0.5)
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the row")
    if n <= 30:  # beyond that the numbers would not be legible
        for (i, j), v in np.ndenumerate(matrix):
            if v:
                ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=7, color="white" if share[i, j] > 0.5 else "black")
    # The class names as plain texts beside the cells, not as ticks: 2 x 81 ticks were half of drawing an
    # 81-class matrix (each tick is a prototype copy of two lines and a text).
    ax.set_xticks([])
    ax.set_yticks([])
    size = 7 if n <= 30 else 4
    below, left = blended_transform_factory(ax.transData, ax.transAxes), blended_transform_factory(ax.transAxes, ax.transData)
    for i, label in enumerate(labels):
        ax.text(i, -0.005, label, transform=below, rotation=90, ha="center", va="top", fontsize=size)
        ax.text(-0.005, i, label, transform=left, ha="right", va="center", fontsize=size)
    ax.set_title(f"confusion matrix, IoU >= {confusion['iou']}")
    longest = max((len(str(label)) for label in labels), default=1)
    margin = min(0.35, 0.03 + longest * size / 72 * 0.6 / side)  # the names' length in inches, as a share
    fig.text(0.5, 0.01, "predicted (background: missed)", ha="center", va="bottom")
    fig.text(0.01, 0.5, "ground truth (background: false detection)", rotation=90, ha="left", va="center")
    return _png(fig, {"left": margin + 0.03, "bottom": margin + 0.03, "right": 1 - 0.9 / side, "top": 1 - 0.4 / side})


def thresholds_png(thresholds: dict[str, Any]) -> bytes:
    """Precision, recall and F1 against the score threshold (all categories), one panel per IoU, the
    F1-optimal threshold marked."""
    ious = list(thresholds["overall"])
    fig, axes = _figure(6 * len(ious), 4.5, len(ious))
    for ax, iou in zip(axes, ious):
        curves = thresholds["overall"][iou]
        for key in ("precision", "recall", "f1"):
            ax.plot(thresholds["scores"], curves[key], label=key, linewidth=2.5 if key == "f1" else 1.2)
        best = curves["best"]
        if best["threshold"] is not None:
            ax.axvline(best["threshold"], color="grey", linestyle="--", label=f"best F1 {best['f1']:.3f} @ {best['threshold']:.3f}")
        ax.set(title=f"all categories, IoU={iou}", xlabel="score threshold", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig, {"left": 0.06, "right": 0.98, "bottom": 0.11, "top": 0.92, "wspace": 0.15})


def pr_curves_png(panels: list[tuple[str, dict[str, np.ndarray]]]) -> bytes:
    """A PNG of precision/recall curves, one panel per ``(title, {label: precision [R]})``, each curve
    sampled at ``RECALL_THRESHOLDS``; the first label of a panel is drawn bold (the overall curve)."""
    fig, axes = _figure(6 * len(panels), 5, len(panels))
    for ax, (title, curves) in zip(axes, panels):
        for i, (label, precision) in enumerate(curves.items()):
            ax.plot(RECALL_THRESHOLDS, precision, label=label, linewidth=2.5 if i == 0 else 1.2)
        ax.set(title=title, xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    return _png(fig)
