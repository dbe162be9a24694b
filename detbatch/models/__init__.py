"""Detectors by name, their weights, their categories and checkpoints."""

from detbatch.models.detectors import (
    CHECKPOINT_FORMAT,
    EXTRA_MODELS,
    Categories,
    LoadedDetector,
    build_detector,
    build_model,
    check_model_name,
    check_weights,
    checkpoint_dict,
    default_categories,
    is_checkpoint_uri,
    load_checkpoint,
    model_names,
    replace_box_predictor,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "EXTRA_MODELS",
    "Categories",
    "LoadedDetector",
    "build_detector",
    "build_model",
    "check_model_name",
    "check_weights",
    "checkpoint_dict",
    "default_categories",
    "is_checkpoint_uri",
    "load_checkpoint",
    "model_names",
    "replace_box_predictor",
]
