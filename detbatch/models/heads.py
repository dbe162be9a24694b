"""A fresh box predictor for other categories: :func:`replace_box_predictor`, for fine-tuning."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from detbatch.config import ConfigError

# Prior probability of a foreground class in a fresh one-stage classifier (RetinaNet's focal-loss init):
# the first steps then see small, stable losses instead of every anchor voting for every class.
_PRIOR_PROBABILITY = 0.01


def replace_box_predictor(model: "torch.nn.Module", num_classes: int) -> None:
    """Give ``model`` a fresh, randomly initialised classifier for ``num_classes`` labels (background included).

    Only the last layer(s) that depend on the number of classes are replaced: Faster R-CNN's
    ``box_predictor`` (class scores and class-specific box deltas), RetinaNet's and FCOS's ``cls_logits``
    conv, SSD's per-level class convs. Everything else (backbone, FPN, RPN, conv towers, box regression of
    one-stage models) keeps its weights.
    """
    import math

    from torch import nn
    from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    def fresh_conv(old: nn.Conv2d, out_channels: int, prior: bool) -> nn.Conv2d:
        conv = nn.Conv2d(old.in_channels, out_channels, old.kernel_size, old.stride, old.padding,
                         groups=old.groups, bias=old.bias is not None)  # fmt: skip
        nn.init.normal_(conv.weight, std=0.01)
        if conv.bias is not None:
            nn.init.constant_(conv.bias, -math.log((1 - _PRIOR_PROBABILITY) / _PRIOR_PROBABILITY) if prior else 0.0)
        return conv.to(old.weight.device)

    if isinstance(model, FasterRCNN):
        old = model.roi_heads.box_predictor
        model.roi_heads.box_predictor = FastRCNNPredictor(old.cls_score.in_features, num_classes).to(
            old.cls_score.weight.device
        )
    elif isinstance(model, (RetinaNet, FCOS)):
        head = model.head.classification_head
        head.cls_logits = fresh_conv(head.cls_logits, head.num_anchors * num_classes, prior=True)
        head.num_classes = num_classes
    elif isinstance(model, SSD):
        head = model.head.classification_head
        for i, block in enumerate(head.module_list):
            last = block if isinstance(block, nn.Conv2d) else block[-1]
            conv = fresh_conv(last, last.out_channels // head.num_columns * num_classes, prior=False)
            if isinstance(block, nn.Conv2d):
                head.module_list[i] = conv
            else:
                block[-1] = conv
        head.num_columns = num_classes
    else:
        raise ConfigError(f"cannot replace the box predictor of a {type(model).__name__}; detbatch knows "
                         f"FasterRCNN, RetinaNet, FCOS and SSD")  # fmt: skip
