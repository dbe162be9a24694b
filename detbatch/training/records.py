"""What a run leaves in its folder: checkpoints, ``metrics.jsonl``, ``loss_curve.png``, ``ap_curve.png``.

A checkpoint folder (``RUN/checkpoint_epoch-NNNN/``) holds

- ``model.pt``: the detbatch checkpoint that ``detbatch detect --weights`` and ``export`` read
  (:func:`detbatch.models.checkpoint_dict`), plus ``epoch`` and that epoch's ``metrics``;
- ``train_state.pt``: what resuming needs besides the weights: optimizer, LR scheduler, gradient scaler,
  ``epoch`` (epochs completed) and ``global_step``.

Both load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import json
import os
from typing import TYPE_CHECKING, Any

from detbatch import storage
from detbatch.errors import InputError
from detbatch.models import CHECKPOINT_FORMAT, Categories, checkpoint_dict

if TYPE_CHECKING:
    import torch

MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss_curve.png"
AP_PLOT = "ap_curve.png"


def write_checkpoint(
    folder: str,
    model: "torch.nn.Module",
    name: str,
    model_kwargs: dict[str, Any],
    categories: Categories,
    train_state: dict[str, Any],
    metrics: dict[str, Any],
) -> None:
    """Write ``model.pt`` and ``train_state.pt`` into the local ``folder``."""
    import torch

    epoch = int(train_state["epoch"])
    torch.save(checkpoint_dict(model, name, categories, model_kwargs, epoch=epoch, metrics=metrics), os.path.join(folder, MODEL_FILE))
    torch.save(train_state, os.path.join(folder, STATE_FILE))


def read_checkpoint(folder: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model.pt, train_state.pt)`` of a local checkpoint folder, loaded safely."""
    import torch

    model = torch.load(os.path.join(folder, MODEL_FILE), map_location="cpu", weights_only=True)
    state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)
    if model.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{folder}/{MODEL_FILE} is not a detbatch checkpoint")
    return model, state


def read_metrics(run_uri: str) -> list[dict[str, Any]]:
    """The per-epoch records of ``RUN/metrics.jsonl`` (empty when there are none yet)."""
    try:
        text = storage.read_text(storage.join(run_uri, METRICS_FILE))
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def append_metrics(run_uri: str, record: dict[str, Any]) -> list[dict[str, Any]]:
    """Add an epoch's record to ``metrics.jsonl`` and redraw the plots; returns all records.

    Records of the same or later epochs (left by an attempt that died before finishing them) are
    replaced, so the file holds each epoch once, in order. The file is rewritten whole (object stores
    have no append); it is a few hundred bytes per epoch.
    """
    records = [r for r in read_metrics(run_uri) if r["epoch"] < record["epoch"]] + [record]
    storage.write_text(storage.join(run_uri, METRICS_FILE), "".join(json.dumps(r) + "\n" for r in records))
    storage.write_bytes(storage.join(run_uri, LOSS_PLOT), loss_curve_png(records))
    storage.write_bytes(storage.join(run_uri, AP_PLOT), ap_curve_png(records))
    return records


def _figure(title: str):
    # The object API with the Agg canvas: no pyplot state, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.set(title=title, xlabel="epoch")
    ax.grid(alpha=0.3)
    return fig, ax


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def loss_curve_png(records: list[dict[str, Any]]) -> bytes:
    """Training loss per epoch (mean over its steps), total bold, components thin."""
    fig, ax = _figure("training loss")
    epochs = [r["epoch"] for r in records]
    keys = sorted({k for r in records for k in r if k.startswith("loss_")})
    ax.plot(epochs, [r.get("loss") for r in records], marker="o", linewidth=2.5, label="loss")
    for k in keys:
        ax.plot(epochs, [r.get(k) for r in records], marker=".", linewidth=1.2, label=k[len("loss_") :])
    ax.set(ylabel="loss")
    ax.legend(fontsize=8)
    return _png(fig)


def ap_curve_png(records: list[dict[str, Any]]) -> bytes:
    """Validation AP and AP50 per epoch (empty axes without validation)."""
    fig, ax = _figure("validation mAP (COCO)")
    epochs = [r["epoch"] for r in records if "val_AP" in r]
    for key, label in (("val_AP", "AP (IoU .50:.95)"), ("val_AP50", "AP50")):
        ax.plot(epochs, [r[key] for r in records if "val_AP" in r], marker="o", label=label)
    ax.set(ylabel="AP", ylim=(0, 1))
    ax.legend(fontsize=8)
    return _png(fig)
