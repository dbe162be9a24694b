"""``build_detector(name, weights)``: a ready detector and what its labels mean, for ``detect`` and ``export``.

``weights`` as :func:`detbatch.models.weights.parse_weights` reads it. With ``none``, category names are
those of the model's default weights, so outputs keep their meaning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from detbatch.config import ConfigError
from detbatch.models.categories import Categories
from detbatch.models.checkpoint import load_checkpoint
from detbatch.models.weights import parse_weights
from detbatch.models.zoo import MODELS, build_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedDetector:
    model: "torch.nn.Module"
    categories: Categories
    name: str
    weights: str
    """What was loaded: an enum's full name, ``none``, or the checkpoint URI."""


def default_categories(name: str) -> Categories:
    """Category names of ``name``'s default weights (COCO for every torchvision detector)."""
    from torchvision.models import get_model_weights

    return Categories.from_names(list(get_model_weights(name).DEFAULT.meta["categories"]))


def build_detector(
    name: str,
    weights: str = "DEFAULT",
    score_threshold: float = 0.05,
    detections_per_image: int = 100,
) -> LoadedDetector:
    """A detector in eval mode on CPU, with its categories. A checkpoint names its own model, used instead of ``name``."""
    spec = parse_weights(name, weights)
    if spec.kind == "checkpoint":
        ckpt = load_checkpoint(spec.weights)
        saved = ckpt["model"]["name"]
        if saved != name:
            logger.info("checkpoint %s holds a %s; using it instead of %s", weights, saved, name)
        name = saved
        categories = Categories.from_list(ckpt["categories"])
        model = build_model(
            name,
            categories.num_classes,
            None,
            None,
            score_threshold,
            detections_per_image,
            **ckpt["model"].get("kwargs", {}),
        )
        model.load_state_dict(ckpt["state_dict"])
    elif spec.kind == "none":
        entry = MODELS[name]
        if entry.categories is not None:  # a model that needs no weights (null)
            categories = Categories.from_names(list(entry.categories))
        elif not entry.torchvision:
            raise ConfigError(f"{name} has no pretrained categories; give --weights a checkpoint URI")
        else:
            categories = default_categories(name)
        model = build_model(name, categories.num_classes, None, None, score_threshold, detections_per_image)
    else:
        categories = Categories.from_names(list(spec.member.meta["categories"]))
        model = build_model(name, None, spec.member, None, score_threshold, detections_per_image)
    model.eval()
    return LoadedDetector(model=model, categories=categories, name=name, weights=spec.weights)
