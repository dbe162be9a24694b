"""detbatch checkpoints: what ``detbatch train`` writes and ``detect``, ``train`` and ``export`` load.

A checkpoint is a ``.pt`` file, or a folder holding ``model.pt``, anywhere :mod:`detbatch.storage` reaches.
It holds ``{"format", "model": {"name", "kwargs"}, "categories", "state_dict", ...}`` and is read with
``torch.load(weights_only=True)``: it names its model and categories itself.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from detbatch.models.categories import Categories

from detbatch.errors import InputError

CHECKPOINT_FORMAT = "detbatch.checkpoint/1"


def is_checkpoint_uri(weights: str) -> bool:
    """Whether ``--weights`` names a checkpoint (a path or URI) rather than torchvision weights or ``none``."""
    return "/" in weights or weights.endswith(".pt") or "://" in weights


def checkpoint_path(uri: str) -> str:
    """The ``.pt`` file of checkpoint ``uri``: ``uri`` itself, or ``model.pt`` in that folder."""
    from detbatch import storage

    return uri if uri.endswith(".pt") else storage.join(uri, "model.pt")


def check_checkpoint_exists(uri: str) -> None:
    """Fail fast, on the driver, on a checkpoint that no worker could read."""
    from detbatch import storage

    path = checkpoint_path(uri)
    fs, fs_path = storage.resolve(path)
    if not fs.exists(fs_path):
        raise InputError(f"checkpoint {path} not found (check --weights)")


def load_checkpoint(uri: str) -> dict[str, Any]:
    """Read a detbatch checkpoint (``.pt`` file, or a folder with ``model.pt``) safely."""
    import torch

    from detbatch import storage

    path = checkpoint_path(uri)
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise InputError(
            f"checkpoint {path} not found; --weights takes DEFAULT, a torchvision weights name, "
            f"none, or a checkpoint written by `detbatch train`"
        ) from None
    except Exception as e:
        raise storage.StorageError(storage.describe_error(path, e)) from e
    ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not a detbatch checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return ckpt


def checkpoint_dict(
    model: "torch.nn.Module", name: str, categories: "Categories", model_kwargs: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """The checkpoint payload ``load_checkpoint`` reads back (``extra``: optimizer state, epoch, ...)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": {"name": name, "kwargs": dict(model_kwargs or {})},
        "categories": categories.to_list(),
        "state_dict": model.state_dict(),
        **extra,
    }
