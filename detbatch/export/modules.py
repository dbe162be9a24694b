"""The torch modules that ``detbatch export`` writes: a torchvision detector made scriptable and traceable.

Imports torch at module level (``detbatch.export`` imports this lazily). No ``from __future__ import
annotations`` here: TorchScript compiles these classes from their source and needs real annotations.

Two things differ from the eager detector that ``detbatch detect`` runs:

- :class:`ExactResizeTransform` replaces torchvision's ``GeneralizedRCNNTransform``. Scripted and traced,
  torchvision computes the resize scale in float32 (eager: Python floats), so for some image sizes the
  exported model resizes to one pixel less than detect does — 640×427 becomes 479×319 instead of 479×320 —
  and its detections move. This class computes the resized size exactly as eager PyTorch does (float64,
  then floor) on every path, so the exported model sees the same pixels as detect.
- The wrappers fix the call signature of each format (see :class:`ScriptedDetector`, :class:`OnnxDetector`).
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform


@torch.jit.unused
def _resize_traced(image: Tensor, min_side: float, max_side: float) -> Tensor:
    """The ONNX path of :meth:`ExactResizeTransform.resize`: sizes as graph tensors, float64 throughout.

    The legacy exporter turns 0-d double constants and Python scalars into float32, which brings the
    rounding back; 1-element float64 tensors keep it exact.
    """
    from torch.onnx import operators

    hw = operators.shape_as_tensor(image)[-2:].to(torch.float64)
    sides = torch.tensor([min_side, max_side], dtype=torch.float64)
    shorter, longer = torch.minimum(hw[0:1], hw[1:2]), torch.maximum(hw[0:1], hw[1:2])
    scale = torch.minimum(sides[0:1] / shorter, sides[1:2] / longer)
    size = torch.floor(hw * scale).to(torch.int64)
    return nn.functional.interpolate(image[None], size=(size[0], size[1]), mode="bilinear", align_corners=False)[0]


class ExactResizeTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform (normalise, resize, batch), inference only, with eager's resize.

    Output of ``resize``: the image resized to ``floor(side * scale)`` pixels per side, ``scale =
    min(min_size / shorter side, max_size / longer side)`` in float64 — what eager
    ``F.interpolate(scale_factor=scale, recompute_scale_factor=True)`` produces.
    """

    @classmethod
    def replacing(cls, transform: GeneralizedRCNNTransform) -> "ExactResizeTransform":
        exact = cls(
            transform.min_size,
            transform.max_size,
            transform.image_mean,
            transform.image_std,
            transform.size_divisible,
            transform.fixed_size,
        )
        return exact.train(transform.training)

    def resize(self, image: Tensor, target: Optional[Dict[str, Tensor]] = None) -> Tuple[Tensor, Optional[Dict[str, Tensor]]]:
        if target is not None:
            raise ValueError("ExactResizeTransform is for inference: it does not resize targets")
        fixed = self.fixed_size
        if fixed is not None:  # SSD: a fixed (width, height), exact in torchvision already
            size = [fixed[1], fixed[0]]
            return nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0], target
        min_side, max_side = float(self.min_size[-1]), float(self.max_size)
        if torch.jit.is_tracing():
            return _resize_traced(image, min_side, max_side), target
        h, w = image.shape[-2], image.shape[-1]
        scale = min(min_side / float(min(h, w)), max_side / float(max(h, w)))
        size = [int(math.floor(float(h) * scale)), int(math.floor(float(w) * scale))]
        return nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0], target


def with_exact_resize(model: nn.Module) -> nn.Module:
    """``model`` with its transform replaced by :class:`ExactResizeTransform`, in place.

    Only a plain ``GeneralizedRCNNTransform`` is replaced: a subclass (``tiny_fcos`` keeps each image's
    size) already behaves the same scripted, traced and eager.
    """
    transform = getattr(model, "transform", None)
    if type(transform) is GeneralizedRCNNTransform:
        model.transform = ExactResizeTransform.replacing(transform)
    return model


class ScriptedDetector(nn.Module):
    """What a TorchScript export holds: ``images -> detections``, any number of images of any sizes.

    images: list of float32 [3, H, W], RGB in [0, 1]. Returns one dict per image: ``boxes`` float32 [N, 4]
    xyxy in pixels of that image, ``labels`` int64 [N] (index into the categories), ``scores`` float32
    [N], sorted by decreasing score. (Scripted torchvision detectors return ``(losses, detections)``;
    this drops the losses.)
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: List[Tensor]) -> List[Dict[str, Tensor]]:
        return self.model(images)[1]


class OnnxDetector(nn.Module):
    """What an ONNX export holds: one image -> ``(boxes, labels, scores)``.

    image: float32 [3, height, width], RGB in [0, 1], any height and width. The tracing exporter unrolls
    torchvision's loop over the images of a batch, so the batch size is fixed at export: one image per run.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        detections = self.model([image])[0]
        return detections["boxes"], detections["labels"], detections["scores"]
