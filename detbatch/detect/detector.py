"""The detector pool's actor: loads a model once, runs it on batches of decoded images, commits them.

Input rows come from :mod:`detbatch.detect.decode`. Each call runs the model over the call's images in
mini-batches of ``batch_size``, then writes and commits the call's Parquet file pair itself
(:func:`detbatch.detect.sink.write_parts`) before returning. Committing in the actor rather than in a later
stage means a result is durable as soon as it exists: Ray Data releases a task's output blocks only
when the task ends or its buffer fills, so a downstream writer could sit idle for most of a run.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from detbatch.detect.decode import DECODED_SCHEMA

logger = logging.getLogger(__name__)

# The decoded rows' columns that pass through to the output (all but the pixels).
PASSTHROUGH = tuple(n for n in DECODED_SCHEMA.names if n != "pixels")

# One row per image: the passthrough columns, then its detections as lists (``box``: 4 floats per
# detection, xyxy pixels of the original image).
SCORED_SCHEMA = pa.schema(
    [
        *(DECODED_SCHEMA.field(n) for n in PASSTHROUGH),
        pa.field("category_id", pa.list_(pa.int32())),
        pa.field("category", pa.list_(pa.string())),
        pa.field("score", pa.list_(pa.float32())),
        pa.field("box", pa.list_(pa.float32())),
    ]
)


def select_device(requested: str) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("inference.device is 'cuda' but this worker sees no GPU; use device: auto or cpu")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


class Detector:
    """Callable class for ``map_batches(compute=ActorPoolStrategy(...))``.

    ``threads`` caps torch's intra-op threads so that actors sharing a node do not oversubscribe it.
    """

    settings: dict[str, Any] = {}
    """Constructor arguments baked in by :meth:`configured`."""

    @classmethod
    def configured(cls, **settings: Any) -> type["Detector"]:
        """A subclass whose no-argument constructor uses ``settings``.

        Ray keeps constructor arguments in the object store, where an actor restarted after a
        crash may no longer find them; settings carried by the class itself always come along.
        """
        return type(cls.__name__, (cls,), {"settings": settings})

    def __init__(self, **overrides: Any):
        self._setup(**{**self.settings, **overrides})

    def _setup(
        self,
        model: str,
        weights: str,
        score_threshold: float,
        detections_per_image: int,
        device: str = "auto",
        fp16: bool = True,
        threads: int = 1,
        batch_size: int = 8,
        output: str | None = None,
        generation: int = 0,
    ):
        import warnings

        import torch

        from detbatch.models import build_detector

        # Pixels arrive in read-only Arrow buffers; the model never writes to its input tensors.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        torch.set_num_threads(max(1, threads))
        self.device = select_device(device)
        loaded = build_detector(model, weights, score_threshold, detections_per_image)
        self.model = loaded.model.to(self.device)
        self.fp16 = fp16 and self.device == "cuda"
        self.batch_size = batch_size
        self.output = output
        self.generation = generation
        labels = loaded.categories.labels
        self.category_ids = np.array([c[0] if c else i for i, c in enumerate(labels)], dtype=np.int32)
        self.category_names = np.array([c[1] if c else "N/A" for c in labels], dtype=object)
        logger.info("detector %s (%s) ready on %s", loaded.name, loaded.weights, self.device)

    def predict(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """images: uint8 H×W×3 -> per image ``boxes`` float32 [N, 4] xyxy pixels, ``labels``, ``scores``."""
        import torch

        tensors = [
            torch.from_numpy(im).to(self.device, non_blocking=True).permute(2, 0, 1).float().div_(255)
            for im in images
        ]
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16):
            outputs = self.model(tensors)
        return [
            {
                "boxes": o["boxes"].float().cpu().numpy(),
                "labels": o["labels"].cpu().numpy(),
                "scores": o["scores"].float().cpu().numpy(),
            }
            for o in outputs
        ]

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """Detect, commit to ``output`` as lease ``generation``, return per-unit counts
        (:data:`detbatch.detect.sink.SUMMARY_SCHEMA`)."""
        from detbatch.detect.sink import write_parts

        return write_parts(self.score(batch), self.output, self.generation)

    def score(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """Decoded rows -> one row per image with its detections (:data:`SCORED_SCHEMA`)."""
        n = len(batch["uri"])
        ok = [i for i in range(n) if batch["status"][i] == "ok"]
        images = [
            np.frombuffer(batch["pixels"][i], dtype=np.uint8).reshape(int(batch["height"][i]), int(batch["width"][i]), 3)
            for i in ok
        ]
        results: list[dict[str, np.ndarray] | None] = [None] * n
        for start in range(0, len(images), self.batch_size):
            chunk = self.predict(images[start : start + self.batch_size])
            for i, out in zip(ok[start : start + self.batch_size], chunk):
                results[i] = out
        empty = np.zeros(0, np.float32)
        columns: dict[str, list[Any]] = {"category_id": [], "category": [], "score": [], "box": []}
        for r in results:
            labels = r["labels"] if r else np.zeros(0, np.int64)
            columns["category_id"].append(self.category_ids[labels])
            columns["category"].append(self.category_names[labels].tolist())
            columns["score"].append(r["scores"] if r else empty)
            columns["box"].append(r["boxes"].reshape(-1) if r else empty)
        arrays = {k: batch[k] for k in PASSTHROUGH}
        arrays.update(columns)
        return pa.Table.from_pydict(arrays, schema=SCORED_SCHEMA)
