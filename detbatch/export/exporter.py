"""``detbatch export``: a detector to TorchScript or ONNX, checked against the eager model before it is written.

    export_model("s3://b/runs/7/checkpoint", "onnx", "s3://b/models/shapes.onnx", check_images=[...])

The model comes from a detbatch checkpoint or torchvision weights (see :mod:`detbatch.models`), with the
score threshold and detections per image baked in. Formats:

============  ==============================================  ================================================
format        input                                           output
============  ==============================================  ================================================
torchscript   ``List[Tensor]``: float32 [3, H, W], RGB in     one dict per image: ``boxes`` float32 [N, 4] xyxy
              [0, 1]; any number of images, any sizes         pixels of that image, ``labels`` int64 [N],
                                                              ``scores`` float32 [N] (decreasing)
onnx          ``image``: float32 [3, height, width], RGB in   ``boxes`` [N, 4], ``labels`` [N], ``scores`` [N],
              [0, 1]; any height and width; ONE image per     as above
              run (see below)
============  ==============================================  ================================================

ONNX uses torch's TorchScript-based exporter (``dynamo=False``): the ``torch.export`` exporter cannot
capture torchvision detectors' data-dependent control flow (pytorch/vision#9306). Tracing unrolls the
loop over a batch's images, so the ONNX graph takes exactly one image; its rank-3 input makes ONNX Runtime
refuse a batch with "Invalid rank for input: image".

Category names: ``labels`` index the list in ``OUT.categories.json`` (``null`` for background and gaps,
else ``{"id", "name"}``), also embedded: the TorchScript extra file ``categories.json``
(``torch.jit.load(path, _extra_files={"categories.json": ""})``, after ``import torchvision``, which
registers the ``torchvision::nms`` op the file calls) and the ONNX metadata property
``detbatch.categories``.

Parity: the exported file, loaded back (``torch.jit.load`` / onnxruntime), runs on check images next to
the eager model that ``detbatch detect`` runs; every detection must have a counterpart with the same label,
a score within ``tolerance`` and box coordinates within ``tolerance`` × the image's width/height. Only then
is ``OUT`` written. See :data:`PARITY_TOLERANCE` for why 1e-3.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from detbatch import models, storage
from detbatch.config import ConfigError
from detbatch.errors import DetbatchError, InputError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx")

# Scores are probabilities, boxes are compared as fractions of the image's width and height. The exported
# graph runs other kernels than eager PyTorch (ONNX Runtime's MLAS; TorchScript's fused graph), so float32
# sums are reordered: on COCO128 we measure differences up to ~5e-5 in scores and ~5e-6 of the image size in
# boxes (3e-3 px at 640 px). 1e-3 is 20x that noise, and still invisible: 0.6 px at 640 px, a change in IoU
# of under 1% for a 100 px box, no change in mAP at its printed precision.
PARITY_TOLERANCE = 1e-3

# ONNX opset 17: supported by every ONNX Runtime since 1.11 and by TensorRT 8.6+; torchvision's detectors
# need 11 or more (RoiAlign, NonMaxSuppression).
ONNX_OPSET = 17

# Check images when none are given: synthetic shapes of several sizes. A weak check (a COCO model finds little
# in them); pass real images with --check-images.
_SYNTHETIC_SIZES = ((256, 256), (427, 640), (640, 427))


class ParityError(DetbatchError, ValueError):
    """The exported model's detections differ from the eager model's beyond the tolerance."""


@dataclass(frozen=True)
class ParityReport:
    images: int
    detections: int
    """Detections of the eager model on the check images."""
    matched: int
    borderline: int
    """Detections in one model only, scored within the tolerance of a cutoff (score threshold, top-k)."""
    max_score_diff: float
    max_box_diff: float
    """Largest box coordinate difference over matched pairs, as a fraction of the image's width/height."""
    tolerance: float


@dataclass(frozen=True)
class ExportResult:
    path: str
    format: str
    model: str
    weights: str
    categories_path: str
    num_bytes: int
    parity: ParityReport
    check_source: str
    """Where the check images came from: their URIs' common folder, or ``synthetic``."""

    def lines(self) -> list[str]:
        p = self.parity
        return [
            f"export: {self.model} ({self.weights}) -> {self.path} ({self.format}, {self.num_bytes / 2**20:.1f} MiB)",
            f"  parity on {p.images} images ({self.check_source}): {p.matched}/{p.detections} detections matched"
            f"{f', {p.borderline} at a cutoff' if p.borderline else ''}, max |dscore| {p.max_score_diff:.1e}, "
            f"max |dbox| {p.max_box_diff:.1e} of image size (tolerance {p.tolerance:g})",
            f"  categories: {self.categories_path} (also embedded)",
        ]


ImageDetections = dict[str, np.ndarray]
"""``boxes`` float32 [N, 4] xyxy pixels, ``labels`` int64 [N], ``scores`` float32 [N]."""


def compare_detections(
    reference: list[ImageDetections],
    exported: list[ImageDetections],
    image_sizes: list[tuple[int, int]],
    tolerance: float = PARITY_TOLERANCE,
    score_threshold: float = 0.0,
    detections_per_image: int | None = None,
    names: list[str] | None = None,
) -> ParityReport:
    """Pair each image's detections (same label, score and box within ``tolerance``); raise if any is unpaired.

    image_sizes: (height, width) per image; boxes are compared as fractions of them. Pairing ignores order,
    so near-equal scores may swap places. A detection found by one model only is tolerated when its score is
    within ``tolerance`` of a cutoff the other model may have put it past: ``score_threshold``, or the
    lowest score of a list that is full at ``detections_per_image``. Fewer than half the eager detections
    paired (none at all, or ties everywhere) is inconclusive, and refused too.
    """
    matched = borderline = total = 0
    max_score = max_box = 0.0
    for i, (ref, exp, (height, width)) in enumerate(zip(reference, exported, image_sizes, strict=True)):
        name = names[i] if names else f"image {i}"
        scale = np.array([width, height, width, height], dtype=np.float64)
        ref_boxes, exp_boxes = ref["boxes"] / scale, exp["boxes"] / scale
        free = np.ones(len(exp["scores"]), dtype=bool)
        total += len(ref["scores"])
        for r in np.argsort(-ref["scores"], kind="stable"):
            candidates = np.flatnonzero(free & (exp["labels"] == ref["labels"][r]))
            if len(candidates):
                score_diff = np.abs(exp["scores"][candidates] - ref["scores"][r])
                box_diff = np.abs(exp_boxes[candidates] - ref_boxes[r]).max(axis=1)
                best = int(np.argmin(np.maximum(score_diff, box_diff)))
                if max(score_diff[best], box_diff[best]) <= tolerance:
                    free[candidates[best]] = False
                    matched += 1
                    max_score, max_box = max(max_score, float(score_diff[best])), max(max_box, float(box_diff[best]))
                    continue
            if not _at_cutoff(ref["scores"], r, tolerance, score_threshold, detections_per_image):
                raise ParityError(_unpaired_message(name, "eager", ref, r, exp, tolerance))
            borderline += 1
        for x in np.flatnonzero(free):
            if not _at_cutoff(exp["scores"], x, tolerance, score_threshold, detections_per_image):
                raise ParityError(_unpaired_message(name, "exported", exp, x, ref, tolerance))
            borderline += 1
    if matched < total / 2 or total == 0:
        # Nothing, or mostly ties at a cutoff (a random-weights model scores every box alike): a pass would say
        # nothing about the export.
        raise ParityError(
            f"export parity check inconclusive: {matched} of the eager model's {total} detections on {len(reference)} "
            f"check images could be paired, {borderline} sit at a cutoff (score threshold or top-k). Give check "
            f"images on which the model finds objects with distinct scores (--check-images); nothing was written"
        )
    return ParityReport(len(reference), total, matched, borderline, max_score, max_box, tolerance)


def _at_cutoff(scores: np.ndarray, i: int, tolerance: float, threshold: float, top_k: int | None) -> bool:
    if scores[i] < threshold + tolerance:
        return True
    return top_k is not None and len(scores) >= top_k and scores[i] <= scores.min() + tolerance


def _unpaired_message(name: str, side: str, dets: ImageDetections, i: int, other: ImageDetections, tolerance: float) -> str:
    def show(d: ImageDetections, j: int) -> str:
        return f"label {int(d['labels'][j])}, score {float(d['scores'][j]):.5f}, box {np.round(d['boxes'][j], 2).tolist()}"

    same = np.flatnonzero(other["labels"] == dets["labels"][i])
    closest = ""
    if len(same):
        j = same[np.argmin(np.abs(other["boxes"][same] - dets["boxes"][i]).max(axis=1))]
        closest = f"; closest with that label: {show(other, j)}"
    return (
        f"export parity failed on {name}: the {side} model's detection ({show(dets, i)}) has no counterpart "
        f"within {tolerance:g}{closest}. The exported model does not reproduce the eager model; nothing was written"
    )


def export_model(
    weights: str,
    format: Literal["torchscript", "onnx"],
    out: str,
    model: str | None = None,
    check_images: list[str] | None = None,
    score_threshold: float = 0.05,
    detections_per_image: int = 100,
    tolerance: float = PARITY_TOLERANCE,
    opset: int = ONNX_OPSET,
    device: str = "cpu",
) -> ExportResult:
    """Export ``weights`` (a checkpoint URI, or torchvision weights of ``model``) to ``out`` as ``format``.

    check_images: image URIs for the parity check (real images: a few of the data the model will see);
    None uses synthetic images. ``out`` is a local path or any URI; ``OUT.categories.json`` is written beside.
    Raises :class:`ParityError` (nothing written) when the export does not reproduce the eager model.
    ``device``: where the parity check runs the eager model and the TorchScript file (``cuda``: as ``detbatch
    detect`` runs it on a GPU, in float32); the ONNX file runs in ONNX Runtime on CUDA when its CUDA provider
    is installed, else on CPU. The file is written from the model on CPU either way.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose one of: {', '.join(FORMATS)}")
    if model is None:
        spec = models.parse_weights(None, weights)  # a checkpoint, which names its own model, or an error
        model = models.load_checkpoint(spec.weights)["model"]["name"]  # read again by build_detector: simple beats fast here
    models.check_weights(model, weights)
    loaded = models.build_detector(model, weights, score_threshold, detections_per_image)
    if check_images:
        images, names = [_read_image(uri) for uri in check_images], list(check_images)
        folders = {uri.rsplit("/", 1)[0] for uri in check_images}
        source = folders.pop() if len(folders) == 1 else f"{len(folders)} folders"
    else:
        images, names, source = _synthetic_images(), [f"synthetic {h}x{w}" for h, w in _SYNTHETIC_SIZES], "synthetic"
    tensors = [_to_tensor(im) for im in images]
    categories = loaded.categories.to_list()
    metadata = {
        "format": "detbatch.export/1",
        "model": loaded.name,
        "weights": loaded.weights,
        "score_threshold": score_threshold,
        "detections_per_image": detections_per_image,
        "input": "torchscript: List[float32 [3, H, W]]" if format == "torchscript" else "image: float32 [3, height, width], one per run",
    }

    with tempfile.TemporaryDirectory(prefix="detbatch-export-") as tmp:
        artifact = os.path.join(tmp, f"model.{'pt' if format == 'torchscript' else 'onnx'}")
        # The reference first: exporting leaves the model in training mode (tracing's wrapper is a new module).
        on_device = [t.to(device) for t in tensors]
        reference = _predict_eager(loaded.model.to(device), on_device, batched=format == "torchscript")
        loaded.model.to("cpu")
        if format == "torchscript":
            _write_torchscript(loaded.model, artifact, categories, metadata)
            exported = _run_torchscript(artifact, on_device, device)
        else:
            _write_onnx(loaded.model, artifact, tensors[0], categories, metadata, opset)
            exported = _run_onnx(artifact, tensors, device)
        parity = compare_detections(
            reference, exported, [im.shape[:2] for im in images], tolerance, score_threshold, detections_per_image, names
        )
        with open(artifact, "rb") as f:
            data = f.read()
    storage.write_bytes(out, data)
    categories_path = f"{out}.categories.json"
    storage.write_text(categories_path, json.dumps(categories, indent=1) + "\n")
    logger.info("exported %s to %s; parity %s", loaded.name, out, parity)
    return ExportResult(out, format, loaded.name, loaded.weights, categories_path, len(data), parity, source)


def _read_image(uri: str) -> np.ndarray:
    from detbatch.detect.decode import decode_sample
    from detbatch.detect.read import read_file

    data, error = read_file(uri)
    if data is None and error is not None and error.startswith("file not found"):
        raise InputError(f"check image {uri} not found (check --check-images)")
    pixels, error = decode_sample(data, error)
    if error is not None:
        raise InputError(f"check image {uri}: {error}")
    return pixels


def _synthetic_images() -> list[np.ndarray]:
    from detbatch.datasets.synth import render_image

    return [render_image(0, i + 1, image_size=max(h, w)).pixels[:h, :w] for i, (h, w) in enumerate(_SYNTHETIC_SIZES)]


def _to_tensor(pixels: np.ndarray) -> "torch.Tensor":
    """uint8 [H, W, 3] -> float32 [3, H, W] in [0, 1], as the detect actors feed the model."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div_(255)


def _as_numpy(d: dict[str, Any]) -> ImageDetections:
    return {k: d[k].detach().cpu().numpy() for k in ("boxes", "labels", "scores")}


def _predict_eager(model: "torch.nn.Module", tensors: list["torch.Tensor"], batched: bool) -> list[ImageDetections]:
    import torch

    with torch.inference_mode():
        if batched:
            return [_as_numpy(d) for d in model(tensors)]
        return [_as_numpy(model([t])[0]) for t in tensors]


def _write_torchscript(model: "torch.nn.Module", path: str, categories: list[Any], metadata: dict[str, Any]) -> None:
    import warnings

    import torch

    from detbatch.export.modules import ScriptedDetector, with_exact_resize

    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export, which cannot yet capture these detectors.
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
        warnings.filterwarnings("ignore", message="RCNN always returns a")
        scripted = torch.jit.script(ScriptedDetector(with_exact_resize(model)))
    extra = {"categories.json": json.dumps(categories), "detbatch.json": json.dumps(metadata)}
    torch.jit.save(scripted, path, _extra_files=extra)


def _run_torchscript(path: str, tensors: list["torch.Tensor"], device: str = "cpu") -> list[ImageDetections]:
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.* is deprecated")
        module = torch.jit.load(path, map_location=device)
        with torch.inference_mode():
            return [_as_numpy(d) for d in module(tensors)]


def _write_onnx(
    model: "torch.nn.Module", path: str, example: "torch.Tensor", categories: list[Any], metadata: dict[str, Any], opset: int
) -> None:
    import warnings

    import onnx
    import torch

    from detbatch.export.modules import OnnxDetector, with_exact_resize

    axes = {"image": {1: "height", 2: "width"}, "boxes": {0: "detections"}, "labels": {0: "detections"}, "scores": {0: "detections"}}
    with warnings.catch_warnings():
        # Tracing torchvision's detectors warns about every shape it reads; the parity check is what tells.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            OnnxDetector(with_exact_resize(model)),
            (example,),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=["boxes", "labels", "scores"],
            dynamic_axes=axes,
        )
    proto = onnx.load(path)
    props = {"detbatch.categories": json.dumps(categories), **{f"detbatch.{k}": str(v) for k, v in metadata.items()}}
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    onnx.save(proto, path)


def onnx_providers(device: str) -> list[str]:
    """ONNX Runtime's providers for ``device``: CUDA first where the installed onnxruntime has it."""
    import onnxruntime as ort

    cuda = device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]


def _run_onnx(path: str, tensors: list["torch.Tensor"], device: str = "cpu") -> list[ImageDetections]:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=onnx_providers(device))
    results = []
    for t in tensors:
        boxes, labels, scores = session.run(["boxes", "labels", "scores"], {"image": t.numpy()})
        results.append({"boxes": boxes, "labels": labels, "scores": scores})
    return results
