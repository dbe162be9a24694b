"""``tiny_fcos``: a small detector that trains in minutes on CPU, for the demo and the tests.

torchvision's :class:`~torchvision.models.detection.FCOS` (anchor-free, one feature level) on a
seven-convolution backbone of stride 8: about 1.6 M parameters. Images are not resized by default (the
network is fully convolutional, so any size works and objects keep their pixel size); give ``min_size``
and ``max_size`` to resize as torchvision's detectors do.

Backbone stages (``trainable_backbone_layers`` counts them from the end)::

    stem    3 -> 32,  stride 2, then 32 -> 32
    stage2  32 -> 64, stride 2, then 64 -> 64
    stage3  64 -> 128, stride 2, then 128 -> 128 twice      output: 128 channels, stride 8
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform

# One anchor point per stride-8 cell. FCOS uses the anchor size only to normalise box regression
# targets (and, with several levels, to route objects by size): 32 px is mid-range for objects of
# 12-48 px, the synthetic dataset's range at 128 px.
ANCHOR_SIZE = 32
STAGES = ("stem", "stage2", "stage3")
OUT_CHANNELS = 128


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class TinyBackbone(nn.Module):
    """images float [B, 3, H, W] -> ``{"0": features [B, 128, ceil(H/8), ceil(W/8)]}``."""

    out_channels = OUT_CHANNELS

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            OrderedDict(
                stem=nn.Sequential(_conv(3, 32, 2), _conv(32, 32)),
                stage2=nn.Sequential(_conv(32, 64, 2), _conv(64, 64)),
                stage3=nn.Sequential(_conv(64, 128, 2), _conv(128, 128), _conv(128, 128)),
            )
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return OrderedDict([("0", self.body(x))])


class _NoResizeTransform(GeneralizedRCNNTransform):
    """Normalise and batch, keep the pixel size (boxes then need no rescaling)."""

    def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None):
        return image, target


def tiny_fcos(
    num_classes: int,
    score_threshold: float = 0.05,
    detections_per_image: int = 100,
    min_size: int | None = None,
    max_size: int | None = None,
    **kwargs: Any,
) -> FCOS:
    """A ``tiny_fcos`` with ``num_classes`` labels (background included), randomly initialised.

    ``min_size``/``max_size``: resize like torchvision's detectors (shorter side to ``min_size``, longer
    at most ``max_size``); both None (default): keep each image's size. ``kwargs`` go to ``FCOS``.
    """
    if num_classes is None or num_classes < 2:
        raise ValueError(f"tiny_fcos needs num_classes >= 2 (background + categories), got {num_classes}")
    anchors = AnchorGenerator(sizes=((ANCHOR_SIZE,),), aspect_ratios=((1.0,),))
    model = FCOS(
        TinyBackbone(),
        num_classes,
        min_size=min_size or 800,
        max_size=max_size or 1333,
        anchor_generator=anchors,
        score_thresh=score_threshold,
        detections_per_img=detections_per_image,
        **kwargs,
    )
    if min_size is None and max_size is None:
        t = model.transform
        model.transform = _NoResizeTransform(t.min_size, t.max_size, t.image_mean, t.image_std, t.size_divisible)
    return model
