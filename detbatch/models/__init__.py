"""Detectors by name, their weights, their categories and checkpoints.

- :mod:`~detbatch.models.zoo`: ``MODELS``, the detectors by name, and ``build_model``;
- :mod:`~detbatch.models.weights`: ``parse_weights``, what a ``weights`` string names;
- :mod:`~detbatch.models.checkpoint`: what ``detbatch train`` writes and the others load;
- :mod:`~detbatch.models.categories`: what output labels mean;
- :mod:`~detbatch.models.detectors`: ``build_detector``, a ready detector for ``detect`` and ``export``;
- :mod:`~detbatch.models.heads`: a fresh box predictor, for fine-tuning;
- :mod:`~detbatch.models.tiny`: ``tiny_fcos``, detbatch's own small detector.
"""

from detbatch.models.categories import Categories
from detbatch.models.checkpoint import (
    CHECKPOINT_FORMAT,
    check_checkpoint_exists,
    checkpoint_dict,
    checkpoint_path,
    is_checkpoint_uri,
    load_checkpoint,
)
from detbatch.models.detectors import LoadedDetector, build_detector, default_categories
from detbatch.models.heads import replace_box_predictor
from detbatch.models.weights import WeightsSpec, check_weights, parse_weights
from detbatch.models.zoo import EXTRA_MODELS, MODELS, ModelEntry, build_model, check_model_name, model_names

__all__ = [
    "CHECKPOINT_FORMAT",
    "EXTRA_MODELS",
    "MODELS",
    "Categories",
    "LoadedDetector",
    "ModelEntry",
    "WeightsSpec",
    "build_detector",
    "build_model",
    "check_checkpoint_exists",
    "check_model_name",
    "check_weights",
    "checkpoint_dict",
    "checkpoint_path",
    "default_categories",
    "is_checkpoint_uri",
    "load_checkpoint",
    "model_names",
    "parse_weights",
    "replace_box_predictor",
]
