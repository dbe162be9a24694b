"""The detectors detbatch can build, by name: ``MODELS`` and ``build_model``.

torchvision's detectors, detbatch's own small ``tiny_fcos`` and the benchmark-only ``null`` (finds nothing:
what the pipeline costs without a model, :mod:`detbatch.models.null`) sit in the same table; only
torchvision's have pretrained weights (``ModelEntry.torchvision``).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

from detbatch.config import ConfigError

TORCHVISION_DETECTION = "torchvision.models.detection"


@dataclass(frozen=True)
class ModelEntry:
    """Where a detector's builder lives, and how it spells the score threshold and detections per image.

    The builder is the function named like the model in ``module``, imported on first use: torchvision takes
    seconds to import, and ``detbatch models`` only lists names.
    """

    module: str
    score_keyword: str
    per_image_keyword: str
    categories: tuple[str, ...] | None = None
    """Label names of a model that runs with ``weights: none`` and has no torchvision weights to name them
    (``null``); None: the weights' (torchvision) or the checkpoint's."""

    @property
    def torchvision(self) -> bool:
        """Whether the model has torchvision ``Weights`` enums (pretrained weights, category names)."""
        return self.module == TORCHVISION_DETECTION


# torchvision's two-stage and one-stage detectors spell the two settings differently.
_TWO_STAGE = ModelEntry(TORCHVISION_DETECTION, "box_score_thresh", "box_detections_per_img")
_ONE_STAGE = ModelEntry(TORCHVISION_DETECTION, "score_thresh", "detections_per_img")

MODELS: dict[str, ModelEntry] = {
    "fasterrcnn_resnet50_fpn": _TWO_STAGE,
    "fasterrcnn_resnet50_fpn_v2": _TWO_STAGE,
    "fasterrcnn_mobilenet_v3_large_fpn": _TWO_STAGE,
    "fasterrcnn_mobilenet_v3_large_320_fpn": _TWO_STAGE,
    "retinanet_resnet50_fpn": _ONE_STAGE,
    "retinanet_resnet50_fpn_v2": _ONE_STAGE,
    "fcos_resnet50_fpn": _ONE_STAGE,
    "ssd300_vgg16": _ONE_STAGE,
    "ssdlite320_mobilenet_v3_large": _ONE_STAGE,
    "tiny_fcos": ModelEntry("detbatch.models.tiny", "score_threshold", "detections_per_image"),
    "null": ModelEntry("detbatch.models.null", "score_threshold", "detections_per_image",
                       categories=("__background__", "object")),
}


def model_names() -> list[str]:
    return sorted(MODELS)


def check_model_name(name: str) -> None:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")


def build_model(
    name: str,
    num_classes: int | None = None,
    weights: Any = None,
    weights_backbone: Any = None,
    score_threshold: float = 0.05,
    detections_per_image: int = 100,
    **kwargs: Any,
) -> "torch.nn.Module":
    """Construct detector ``name``; ``weights`` is a torchvision enum member or None.

    ``num_classes``: labels including background; None keeps the builder's default (the weights' categories,
    or COCO's 91). ``weights``/``weights_backbone`` go to torchvision's builders; detbatch's own models have
    none and ignore them. ``kwargs`` go to the builder.
    """
    check_model_name(name)
    entry = MODELS[name]
    builder = getattr(importlib.import_module(entry.module), name)
    settings = {entry.score_keyword: score_threshold, entry.per_image_keyword: detections_per_image}
    if not entry.torchvision:
        return builder(num_classes=num_classes, **settings, **kwargs)
    kwargs = {**settings, **kwargs}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return builder(weights=weights, weights_backbone=weights_backbone, **kwargs)


# detbatch's own models (no torchvision weights): name -> builder(num_classes=..., **kwargs). A view of MODELS
# for the code that imports it; a new model goes into MODELS.
EXTRA_MODELS: dict[str, Callable[..., "torch.nn.Module"]] = {
    name: functools.partial(build_model, name) for name, entry in MODELS.items() if not entry.torchvision
}
