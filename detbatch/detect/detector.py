"""The detector pool's actor: loads a model once, runs it on batches of decoded images, commits them.

Input rows come from :mod:`detbatch.detect.decode`: pixels, or (``inference.decode: gpu``) JPEG files that
the actor decodes itself, a mini-batch at a time, on its device (:func:`detbatch.detect.decode.decode_jpegs`).
Each call runs the model over the call's images in mini-batches of ``batch_size``, then writes and commits
the call's Parquet file pair itself (:func:`detbatch.detect.sink.write_parts`) before returning. Committing
in the actor rather than in a later stage means a result is durable as soon as it exists: Ray Data releases a
task's output blocks only when the task ends or its buffer fills, so a downstream writer could sit idle for
most of a run.

Keeping a GPU busy: pixels reach the device from page-locked memory without blocking the host, each
mini-batch's results come back in one copy (one synchronisation per mini-batch), and with ``overlap`` two
calls run in the actor at once (Ray Data's ``max_concurrent_calls_per_actor=2``): one in the model, the other
committing its results, so that the device does not wait for Parquet and storage. A lock lets one call at a
time into the model; each call still returns only once it has committed, so Ray's retry of a call whose
actor died, and the commit protocol, are as without overlap.
"""

from __future__ import annotations

import json
import logging
import posixpath
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from detbatch import storage
from detbatch.detect.decode import DECODED_SCHEMA, ENCODED, decode_jpegs
from detbatch.detect.sink import ATTEMPTS_DIR
from detbatch.detect.thresholds import ScoreThresholds
from detbatch.faults import failpoint

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CRASHED = "detector crashed on this image (twice, on its own; the rest of its call went on)"

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
        per_category: dict[str, Any] | None = None,
        overlap: bool = False,
        max_pixels: int | None = None,
        early_units: tuple[int, ...] = (),
    ):
        """``per_category``: thresholds by category (:meth:`ScoreThresholds.fingerprint` of a thresholds.json),
        applied after the model, which keeps boxes from ``score_threshold`` (the lowest of them) on.
        ``overlap``: the pool runs two calls per actor at once (see the module docstring). ``max_pixels``:
        ``input.max_pixels``, for the JPEGs that the actor decodes on CPU after its device refused them.
        ``early_units``: units whose calls commit their first mini-batch on its own, as soon as it is
        through the model (the run's first units: a pool's first results within seconds, not a call's time)."""
        import warnings

        import torch

        from detbatch.models import build_detector

        # Pixels arrive in read-only Arrow buffers; the model never writes to its input tensors.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        torch.set_num_threads(max(1, threads))
        self.device = select_device(device)
        loaded = build_detector(model, weights, score_threshold, detections_per_image)
        self.model = loaded.model.to(self.device)
        self.loaded = loaded  # what was loaded (name, weights, categories), for those that describe it (serve)
        self.fp16 = fp16 and self.device == "cuda"
        self.batch_size = batch_size
        self.output = output
        self.generation = generation
        self.thresholds = None if per_category is None else ScoreThresholds.from_fingerprint(per_category)
        self.overlap = overlap
        self.max_pixels = max_pixels
        self.early_units = frozenset(early_units)
        self._model_lock = threading.Lock()  # one call in the model at a time (two run at once with overlap)
        labels = loaded.categories.labels
        self.category_ids = np.array([c[0] if c else i for i, c in enumerate(labels)], dtype=np.int32)
        self.category_names = np.array([c[1] if c else "N/A" for c in labels], dtype=object)
        logger.info("detector %s (%s) ready on %s", loaded.name, loaded.weights, self.device)

    def predict(self, images: "list[np.ndarray | torch.Tensor]") -> list[dict[str, np.ndarray]]:
        """images: uint8 H×W×3 numpy, or uint8 [3, H, W] tensors (decoded on the device) -> per image
        ``boxes`` float32 [N, 4] xyxy pixels, ``labels`` int64 [N], ``scores`` float32 [N]."""
        import torch

        tensors = [self._on_device(im).float().div_(255) for im in images]
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16):
            outputs = self.model(tensors)
        return _to_host(outputs)

    def _on_device(self, image: "np.ndarray | torch.Tensor") -> "torch.Tensor":
        """uint8 [3, H, W] on this actor's device. A numpy image goes through page-locked memory, so that its
        copy runs asynchronously (``non_blocking``) while the host prepares the next one; torch's caching host
        allocator reuses the page-locked buffers and keeps each until its copy is done."""
        import torch

        if not isinstance(image, np.ndarray):
            return image.to(self.device)  # decoded there already: no copy
        tensor = torch.from_numpy(image)
        if self.device != "cpu":
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.permute(2, 0, 1)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """Detect, commit to ``output`` as lease ``generation``, return per-unit counts
        (:data:`detbatch.detect.sink.SUMMARY_SCHEMA`).

        A call that killed its actor before (a model crash on one image: a segfault, an abort in a CUDA
        kernel) is isolated when Ray retries it: the attempt record in ``_detbatch/attempts/`` says which
        rows were running, and the retry splits them in halves, commits the halves that run, and after an
        image crashed twice on its own commits it as an error row (:data:`CRASHED`), so the job goes on.
        """
        from detbatch.detect.sink import write_parts

        batch = _sorted(batch)
        record = attempt_uri(self.output, self.generation, batch)
        n = len(batch["uri"])
        # A call of one of the run's first units commits its first mini-batch on its own. The split is the
        # same on every attempt at the call, so that no two attempts commit overlapping parts.
        first = self.batch_size if int(batch["unit"][0]) in self.early_units and n > self.batch_size else n
        state = _after_crash(json.loads(storage.read_text(record))) if storage.exists(record) else \
            {"queue": [[0, first]] + ([[first, n]] if first < n else []), "suspect": [], "crashed": []}
        parts = []
        while state["queue"]:
            lo, hi = state["queue"][0]
            with self._model_lock:
                storage.write_text(record, json.dumps(state))  # if this dies, the retry knows where
                scored = self.score(_rows(batch, lo, hi))
                if self.overlap:  # past the model before the other call enters it: a death from now on is not these rows'
                    storage.write_text(record, json.dumps({**state, "in_model": False}))
            failpoint("detector.between_inference_and_commit")
            parts.append(write_parts(scored, self.output, self.generation))
            state["queue"].pop(0)
        if state["crashed"]:
            logger.error("%d images crashed the detector twice; committed as error rows: %s", len(state["crashed"]),
                         [str(batch["uri"][i]) for i in state["crashed"]][:5])
            parts.append(write_parts(self._crashed(batch, state["crashed"]), self.output, self.generation))
        storage.remove([record])
        return pa.concat_tables(parts)

    def _crashed(self, batch: dict[str, np.ndarray], rows: list[int]) -> pa.Table:
        """Error rows for the images that crashed the detector."""
        picked = {k: batch[k][rows] for k in PASSTHROUGH}
        empty = [np.zeros(0, np.float32)] * len(rows)
        picked.update(width=np.zeros(len(rows), np.int32), height=np.zeros(len(rows), np.int32),
                      status=["error"] * len(rows), error=[CRASHED] * len(rows),
                      category_id=[np.zeros(0, np.int32)] * len(rows), category=[[]] * len(rows), score=empty, box=empty)
        return pa.Table.from_pydict(picked, schema=SCORED_SCHEMA)

    def score(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """Decoded rows -> one row per image with its detections (:data:`SCORED_SCHEMA`). Rows of status
        :data:`~detbatch.detect.decode.ENCODED` are decoded here first, a mini-batch at a time; one that
        cannot be decoded becomes an error row, with the CPU decoder's message."""
        n = len(batch["uri"])
        # Copies: decoding here sets a JPEG row's status, error and size.
        row = {k: np.array(batch[k], dtype=object if k in ("status", "error") else np.int32)
               for k in ("status", "error", "width", "height")}
        todo = [i for i in range(n) if row["status"][i] in ("ok", ENCODED)]
        results: list[dict[str, np.ndarray] | None] = [None] * n
        for start in range(0, len(todo), self.batch_size):
            images = self._pixels(batch, todo[start : start + self.batch_size], row)
            for i in images:  # a test's way to crash the model on one image
                failpoint(f"detector.image:{posixpath.basename(str(batch['uri'][i]))}")
            for i, out in zip(images, self.predict(list(images.values())) if images else []):
                results[i] = out
        empty = np.zeros(0, np.float32)
        columns: dict[str, list[Any]] = {"category_id": [], "category": [], "score": [], "box": []}
        for r in results:
            if r and self.thresholds is not None:
                kept = self.thresholds.keep(self.category_ids[r["labels"]], r["scores"])
                r = {k: v[kept] for k, v in r.items()}
            labels = r["labels"] if r else np.zeros(0, np.int64)
            columns["category_id"].append(self.category_ids[labels])
            columns["category"].append(self.category_names[labels].tolist())
            columns["score"].append(r["scores"] if r else empty)
            columns["box"].append(r["boxes"].reshape(-1) if r else empty)
        arrays = {k: batch[k] for k in PASSTHROUGH}
        arrays.update(row)
        arrays.update(columns)
        return pa.Table.from_pydict(arrays, schema=SCORED_SCHEMA)

    def _pixels(self, batch: dict[str, np.ndarray], rows: list[int],
                row: dict[str, np.ndarray]) -> "dict[int, np.ndarray | torch.Tensor]":
        """The images of ``rows`` (ok or :data:`ENCODED`), in row order: row -> pixels (see :meth:`predict`).
        The JPEGs among them are decoded in one batch; one that fails is made an error row in ``row``."""
        jpegs = [i for i in rows if row["status"][i] == ENCODED]
        decoded = dict(zip(jpegs, decode_jpegs([batch["pixels"][i] for i in jpegs], self.device, self.max_pixels)))
        images: dict[int, np.ndarray | torch.Tensor] = {}
        for i in rows:
            if i not in decoded:
                images[i] = np.frombuffer(batch["pixels"][i], dtype=np.uint8).reshape(int(row["height"][i]),
                                                                                       int(row["width"][i]), 3)
                continue
            pixels, error = decoded[i]
            if pixels is None:
                row["status"][i], row["error"][i], row["width"][i], row["height"][i] = "error", error, 0, 0
                continue
            height, width = pixels.shape[:2] if isinstance(pixels, np.ndarray) else pixels.shape[1:]
            row["status"][i], row["width"][i], row["height"][i] = "ok", width, height
            images[i] = pixels
        return images


def _to_host(outputs: list[dict[str, "torch.Tensor"]]) -> list[dict[str, np.ndarray]]:
    """The model's outputs for a mini-batch -> numpy, in one copy from the device (one synchronisation):
    boxes, scores and labels packed as float32 [N, 6] (labels are category indices, exact in float32)."""
    import torch

    if not outputs:
        return []
    counts = [int(o["scores"].shape[0]) for o in outputs]
    packed = torch.cat([torch.cat([o["boxes"].float(), o["scores"].float()[:, None], o["labels"].float()[:, None]], 1)
                        for o in outputs]).cpu().numpy()
    results, start = [], 0
    for count in counts:
        part, start = packed[start : start + count], start + count
        results.append({"boxes": np.ascontiguousarray(part[:, :4]), "labels": part[:, 5].astype(np.int64),
                        "scores": np.ascontiguousarray(part[:, 4])})
    return results


def attempt_uri(output: str, generation: int, batch: dict[str, np.ndarray]) -> str:
    """Where a call's attempt record lives: by the run's generation and the call's first and last rows."""
    u, i, n = batch["unit"], batch["index"], len(batch["uri"])
    return storage.join(output, ATTEMPTS_DIR, f"g{generation:06d}-{u[0]:08d}-{i[0]:07d}-{u[-1]:08d}-{i[-1]:07d}-{n}.json")


def _sorted(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The batch in (unit, index) order, so that a retried call sees its rows at the same positions."""
    order = np.lexsort((np.asarray(batch["index"]), np.asarray(batch["unit"])))
    return {k: np.asarray(v)[order] for k, v in batch.items()}


def _rows(batch: dict[str, np.ndarray], lo: int, hi: int) -> dict[str, np.ndarray]:
    return {k: v[lo:hi] for k, v in batch.items()}


def _after_crash(state: dict[str, Any]) -> dict[str, Any]:
    """The attempt record of a call whose last attempt died while running ``queue[0]``: split those rows in
    halves; a single image is tried once more on its own, and after a second crash is marked crashed.
    A record that says its rows had left the model (``in_model: false``, written with overlap) is of a call
    that died committing or beside another call's crash: the same rows again, no one suspected."""
    if not state.pop("in_model", True):
        return state
    (lo, hi), rest = state["queue"][0], state["queue"][1:]
    if hi - lo > 1:
        mid = (lo + hi) // 2
        return {**state, "queue": [[lo, mid], [mid, hi], *rest]}
    if lo in state["suspect"]:
        return {**state, "queue": rest, "crashed": [*state["crashed"], lo]}
    return {**state, "suspect": [*state["suspect"], lo]}

