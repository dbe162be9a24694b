"""``null``: a detector that finds nothing, for measuring what the pipeline itself costs per image.

Benchmark-only (``benchmarks/pipeline_overhead.py``, ``benchmarks/million.py``). It goes through the same
path as a real model: ``build_detector`` builds it, the ``Detector`` actor moves each image to a tensor,
calls it, and writes and commits the call's Parquet pair; only the model's own work is gone. Its output is
every image with status ``ok`` and no detections.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class NullDetector(nn.Module):
    """images: list of float [3, H, W] -> per image ``boxes`` float32 [0, 4], ``labels`` int64 [0],
    ``scores`` float32 [0] (torchvision's detection output, empty)."""

    def forward(self, images: list[torch.Tensor], targets: Any = None) -> list[dict[str, torch.Tensor]]:
        return [
            {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
            for _ in images
        ]


def null(num_classes: int | None = None, score_threshold: float = 0.05, detections_per_image: int = 100,
         **kwargs: Any) -> NullDetector:
    """The null detector; the arguments are accepted as every builder's and ignored (it has no weights)."""
    return NullDetector()
