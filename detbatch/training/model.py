"""The model a training run starts from: pretrained, a detbatch checkpoint, or nothing.

Every start ends with a box predictor for the dataset's categories: a torchvision pretrained detector
gets a fresh one; a checkpoint keeps its own when its categories are the dataset's and gets a fresh
one otherwise; the rest of the network (backbone, FPN, RPN, conv towers) carries over.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from detbatch.config import ConfigError
from detbatch.models import (
    MODELS,
    Categories,
    build_model,
    check_checkpoint_exists,
    load_checkpoint,
    parse_weights,
    replace_box_predictor,
)
from detbatch.training.config import ModelConfig

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


@dataclass
class StartingModel:
    """A detector ready to train, and what ``model.pt`` must record to rebuild it."""

    model: "torch.nn.Module"
    name: str
    kwargs: dict[str, Any]
    """Builder arguments saved in the checkpoint (``detect`` rebuilds the model from them)."""
    description: str
    """Where the weights came from, for logs: ``COCO_V1, box predictor replaced``, ..."""


def check_model_config(cfg: ModelConfig) -> None:
    """Fail fast, on the driver, on names that no worker could build, or a missing checkpoint."""
    try:
        spec = parse_weights(cfg.name, cfg.weights)
    except ValueError as e:
        raise ConfigError(f"model.weights: {e}") from None
    if spec.kind == "checkpoint":
        check_checkpoint_exists(spec.weights)
        return
    if cfg.weights_backbone is not None:
        if not MODELS[cfg.name].torchvision:
            raise ConfigError(f"model.weights_backbone: {cfg.name} has no pretrained backbone; set it to null")
        if spec.kind != "none":
            raise ConfigError("model.weights_backbone applies with model.weights: none only (pretrained weights include the backbone)")
        if cfg.weights_backbone != "DEFAULT":
            from torchvision.models import get_weight

            try:
                get_weight(cfg.weights_backbone)
            except (KeyError, ValueError, AttributeError):
                raise ConfigError(
                    f"model.weights_backbone {cfg.weights_backbone!r}: give DEFAULT or a full torchvision weights "
                    f"name such as ResNet50_Weights.IMAGENET1K_V1"
                ) from None


def build_starting_model(cfg: ModelConfig, categories: Categories) -> StartingModel:
    """The model described by ``cfg``, with a box predictor for ``categories``, on CPU, in train mode.

    Call under the same ``torch.manual_seed`` on every worker so that fresh layers start equal.
    """
    weights = cfg.weights
    spec = parse_weights(cfg.name, weights)
    score = {"score_threshold": cfg.score_threshold, "detections_per_image": cfg.detections_per_image}
    trainable = cfg.trainable_backbone_layers
    builder_freezes = False
    if spec.kind == "checkpoint":
        ckpt = load_checkpoint(weights)
        name = ckpt["model"]["name"]
        if name != cfg.name:
            logger.info("checkpoint %s holds a %s; training that instead of %s", weights, name, cfg.name)
        kwargs = {**ckpt["model"].get("kwargs", {}), **cfg.kwargs}
        source = Categories.from_list(ckpt["categories"])
        model = build_model(name, source.num_classes, None, None, **score, **kwargs)
        model.load_state_dict(ckpt["state_dict"])
        if source != categories:
            replace_box_predictor(model, categories.num_classes)
            description = f"checkpoint {weights}, box predictor replaced ({source.num_classes - 1} -> {categories.num_classes - 1} categories)"
        else:
            description = f"checkpoint {weights}, same categories, box predictor kept"
        from_trained = True
    elif spec.kind == "none":
        name, kwargs = cfg.name, dict(cfg.kwargs)
        extra: dict[str, Any] = {}
        if cfg.weights_backbone is not None and trainable is not None:
            extra["trainable_backbone_layers"] = trainable
            builder_freezes = True
        model = build_model(name, categories.num_classes, None, cfg.weights_backbone, **score, **kwargs, **extra)
        from_trained = cfg.weights_backbone is not None
        description = f"backbone {cfg.weights_backbone}, rest random" if from_trained else "random initialisation"
    else:
        name, kwargs = cfg.name, dict(cfg.kwargs)
        extra = {"trainable_backbone_layers": trainable} if trainable is not None else {}
        builder_freezes = True
        model = build_model(name, None, spec.member, None, **score, **kwargs, **extra)
        replace_box_predictor(model, categories.num_classes)
        from_trained = True
        description = f"pretrained {weights}, box predictor replaced ({categories.num_classes - 1} categories)"
    freeze_bn = cfg.freeze_batchnorm if cfg.freeze_batchnorm is not None else from_trained
    if freeze_bn:
        freeze_batchnorm(model.backbone)
    if trainable is not None and not builder_freezes:
        freeze_backbone_blocks(model, trainable)
    model.train()
    return StartingModel(model=model, name=name, kwargs=kwargs, description=description)


def freeze_batchnorm(module: "torch.nn.Module") -> None:
    """Replace every ``BatchNorm2d`` under ``module`` (on CPU) by a ``FrozenBatchNorm2d`` with its statistics.

    torchvision does the same for pretrained backbones: batches of a few images per worker give noisy
    statistics, and the trained ones are better.
    """
    from torch import nn
    from torchvision.ops import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            if child.affine:
                frozen.weight.copy_(child.weight.detach())
                frozen.bias.copy_(child.bias.detach())
            if child.running_mean is not None:
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)


def backbone_blocks(model: "torch.nn.Module") -> list[tuple[str, "torch.nn.Module"]]:
    """The backbone trunk's top-level blocks that hold parameters, input end first.

    ResNet: ``conv1, layer1 .. layer4`` (with frozen BatchNorm, as torchvision counts them); tiny_fcos:
    ``stem, stage2, stage3``; MobileNet: its feature blocks.
    """
    body = getattr(getattr(model, "backbone", None), "body", None)
    if body is None:
        raise ConfigError(
            f"model.trainable_backbone_layers: a {type(model).__name__} without backbone.body cannot be frozen "
            f"block by block; set it to null"
        )
    return [(n, m) for n, m in body.named_children() if any(True for _ in m.parameters())]


def freeze_backbone_blocks(model: "torch.nn.Module", trainable: int) -> None:
    """Train the last ``trainable`` backbone blocks (:func:`backbone_blocks`); freeze the others."""
    blocks = backbone_blocks(model)
    if trainable > len(blocks):
        raise ConfigError(
            f"model.trainable_backbone_layers={trainable}, but this backbone has {len(blocks)} blocks "
            f"({', '.join(n for n, _ in blocks)}); choose 0..{len(blocks)}"
        )
    for _, block in blocks[: len(blocks) - trainable]:
        block.requires_grad_(False)
