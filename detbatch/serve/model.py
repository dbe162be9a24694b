"""The model a replica serves: detect's :class:`~detbatch.detect.detector.Detector`, fed one batch of requests.

The replica builds the same ``Detector`` that detect's pool runs (the same model building, device choice,
fp16 autocast, per-category thresholds) and scores its batch with :meth:`Detector.score`; the rows become
JSON through :func:`detbatch.detect.sink.explode_detections`, the function that writes detect's
``detections`` table. So a served image's detections are detect's rows for it, by construction; the parity
test (tests/serve/test_app.py) checks it against a real detect run.

A model that fails on a batch (an exception: a CUDA error, a shape the model refuses) is run again on each
image alone, so that only the request whose image fails gets its 500 and the others their detections.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from typing import Any

import numpy as np

from detbatch.detect.detector import Detector
from detbatch.detect.sink import explode_detections
from detbatch.detect.thresholds import ScoreThresholds
from detbatch.detect.units import derived_image_id

logger = logging.getLogger(__name__)

# The columns of a detections row that belong to each detection; the image's own (image_id, uri) are
# the response's, once.
DETECTION_FIELDS = ("category_id", "category", "score", "x_min", "y_min", "x_max", "y_max")


@dataclass(frozen=True)
class Item:
    """One request's image, as the batch receives it."""

    pixels: np.ndarray
    """uint8 H×W×3 RGB, as :func:`detbatch.detect.decode.decode_image` returns it."""
    score_threshold: float | None = None
    """The request's own threshold (at least the model's), applied after the model's."""
    uri: str | None = None


@dataclass(frozen=True)
class Answer:
    """What one request gets: an HTTP status and its JSON body."""

    status: int
    body: dict[str, Any]


class ServedModel:
    """A :class:`Detector` (built from ``settings``, its keyword arguments) and the JSON of its detections."""

    def __init__(self, **settings: Any):
        self.settings = settings
        self.detector = Detector(**settings)
        per_category = settings.get("per_category")
        self.thresholds = ScoreThresholds.from_fingerprint(
            per_category if per_category is not None else settings["score_threshold"])

    @property
    def floor(self) -> float:
        """The lowest score the model keeps: a request's threshold may not be lower."""
        return self.thresholds.floor

    def info(self) -> dict[str, Any]:
        """``GET /model``: what is served."""
        import ray
        import torch
        import torchvision

        from detbatch import __version__

        loaded = self.detector.loaded
        return {
            "name": loaded.name,
            "weights": loaded.weights,
            "categories": [c for c in loaded.categories.to_list() if c is not None],
            "score_threshold": self.thresholds.fingerprint(),
            "detections_per_image": self.settings["detections_per_image"],
            "device": self.detector.device,
            "fp16": self.detector.fp16,
            "versions": {"detbatch": __version__, "python": platform.python_version(), "ray": ray.__version__,
                         "torch": torch.__version__, "torchvision": torchvision.__version__},
        }

    def detect(self, items: list[Item]) -> list[Answer]:
        """One answer per item, in order: 200 with the detections, or 500 for an image the model fails on."""
        try:
            return self._answers(items)
        except Exception:
            if len(items) == 1:
                logger.exception("the model failed on one image (%s)", items[0].uri or "request body")
                return [Answer(500, {"error": "the model failed on this image (logged by the replica); "
                                              "the server goes on"})]
            logger.warning("the model failed on a batch of %d images; running each alone", len(items))
            return [answer for item in items for answer in self.detect([item])]

    def _answers(self, items: list[Item]) -> list[Answer]:
        scored = self.detector.score(_decoded_rows(items))
        rows = explode_detections(scored).select(list(DETECTION_FIELDS)).to_pylist()
        counts = [len(s) for s in scored["score"].to_pylist()]
        answers, start = [], 0
        for item, n in zip(items, counts):
            detections = rows[start : start + n]
            start += n
            if item.score_threshold is not None:
                detections = [d for d in detections if d["score"] >= item.score_threshold]
            height, width = item.pixels.shape[:2]
            body: dict[str, Any] = {"width": width, "height": height, "detections": detections}
            if item.uri is not None:  # as a detections row names its image
                body = {"uri": item.uri, "image_id": derived_image_id(item.uri), **body}
            answers.append(Answer(200, body))
        return answers


def _decoded_rows(items: list[Item]) -> dict[str, np.ndarray]:
    """The items as rows of detect's decode stage (:data:`~detbatch.detect.decode.DECODED_SCHEMA`), in the
    numpy batch format :meth:`Detector.score` reads; the pixel arrays themselves, not copies."""
    n = len(items)
    pixels = np.empty(n, dtype=object)
    uris = np.empty(n, dtype=object)
    for i, item in enumerate(items):
        pixels[i] = item.pixels
        uris[i] = item.uri or "request"
    return {
        "unit": np.zeros(n, np.int64),
        "index": np.arange(n, dtype=np.int64),
        "last": np.ones(n, bool),
        "uri": uris,
        "image_id": np.array([derived_image_id(u) for u in uris], np.int64),
        "pixels": pixels,
        "width": np.array([item.pixels.shape[1] for item in items], np.int32),
        "height": np.array([item.pixels.shape[0] for item in items], np.int32),
        "status": np.array(["ok"] * n, dtype=object),
        "error": np.array([None] * n, dtype=object),
    }
