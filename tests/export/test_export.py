"""detbatch export: parity maths (pure), the exact resize, and TorchScript / ONNX exports checked on COCO128."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import torch

from detbatch import cli, models
from detbatch.export import ParityError, compare_detections, export_model

MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"
# COCO128 images for the parity check: portrait and landscape, and sizes (640x427, 640x565, 425x640) whose
# resize torchvision's scripted/traced transform rounds one pixel short of eager PyTorch.
CHECK_NAMES = ("000000000072.jpg", "000000000073.jpg", "000000000077.jpg", "000000000081.jpg")


def _dets(boxes, labels, scores) -> dict[str, np.ndarray]:
    return {
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, np.int64),
        "scores": np.asarray(scores, np.float32),
    }


REF = _dets([[10, 10, 50, 50], [60, 10, 90, 40], [0, 0, 100, 80]], [3, 3, 7], [0.9, 0.9, 0.5])


def test_parity_pairs_detections_whatever_their_order():
    swapped = _dets(REF["boxes"][[1, 0, 2]] + 0.05, [3, 3, 7], np.array([0.9, 0.9, 0.5]) + 2e-4)
    report = compare_detections([REF], [swapped], [(100, 200)])
    assert (report.matched, report.borderline, report.detections) == (3, 0, 3)
    assert report.max_score_diff == pytest.approx(2e-4, rel=1e-2)
    assert report.max_box_diff == pytest.approx(0.05 / 100, rel=1e-2)  # y moved by 0.05 px of 100 px


@pytest.mark.parametrize(
    "exported, why",
    [
        (_dets(REF["boxes"] + [0, 0, 0, 0.2], [3, 3, 7], REF["scores"]), "box 0.2 px of 100 px"),
        (_dets(REF["boxes"], [3, 3, 7], REF["scores"] + [0, 0, 0.002]), "score 0.002"),
        (_dets(REF["boxes"], [3, 3, 8], REF["scores"]), "label"),
        (_dets(REF["boxes"][:2], [3, 3], REF["scores"][:2]), "missing detection"),
    ],
)
def test_parity_refuses_differences_beyond_the_tolerance(exported, why):
    with pytest.raises(ParityError, match=r"on img\.jpg: the (eager|exported) model's detection \(label \d, score"):
        compare_detections([REF], [exported], [(100, 200)], names=["img.jpg"])


def test_parity_tolerates_detections_at_a_cutoff():
    # The 0.5 detection is missing from the export: fine only if 0.5 sits at the score threshold or top-k edge.
    exported = _dets(REF["boxes"][:2], [3, 3], REF["scores"][:2])
    assert compare_detections([REF], [exported], [(100, 200)], score_threshold=0.4995).borderline == 1
    assert compare_detections([REF], [exported], [(100, 200)], detections_per_image=3).borderline == 1
    extra = _dets([*REF["boxes"], [5, 5, 9, 9]], [3, 3, 7, 1], [*REF["scores"], 0.0504])
    assert compare_detections([REF], [extra], [(100, 200)], score_threshold=0.05).borderline == 1
    with pytest.raises(ParityError):
        compare_detections([REF], [extra], [(100, 200)], score_threshold=0.04)


def test_parity_that_proves_nothing_is_refused():
    nothing = _dets([], [], [])
    with pytest.raises(ParityError, match=r"inconclusive: 0 of the eager model's 0 detections"):
        compare_detections([nothing], [nothing], [(100, 200)])
    # A random-weights model: every score alike, so every detection sits at the top-k cutoff.
    ties = _dets(REF["boxes"], [3, 3, 7], [0.011, 0.011, 0.011])
    shuffled = _dets(REF["boxes"][[1, 0, 2]], [7, 3, 3], ties["scores"])  # two boxes with other labels
    with pytest.raises(ParityError, match=r"inconclusive: 1 of the eager model's 3 detections .* 4 sit at a cutoff"):
        compare_detections([ties], [shuffled], [(100, 200)], detections_per_image=3)


@pytest.mark.parametrize("size", [(640, 427), (640, 565), (425, 640), (300, 300)])
def test_exact_resize_matches_eager_scripted_and_traced(size, tmp_path):
    """torchvision's own transform, scripted, rounds 640x427 to 479x319; eager gives 479x320. Ours never does."""
    import onnxruntime as ort
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    from detbatch.export.modules import ExactResizeTransform

    image = torch.rand(3, *size)
    torchvision_t = GeneralizedRCNNTransform(320, 640, [0.5] * 3, [0.2] * 3).eval()
    exact = ExactResizeTransform.replacing(torchvision_t)
    eager = torchvision_t.resize(image)[0]
    assert torch.equal(exact.resize(image)[0], eager)
    assert torch.equal(torch.jit.script(exact).resize(image)[0], eager)

    class Resize(torch.nn.Module):
        def forward(self, x):
            return exact.resize(x)[0]

    path = str(tmp_path / "resize.onnx")
    example = torch.rand(3, 500, 400)  # traced at another size: the graph must compute the size itself
    torch.onnx.export(Resize(), (example,), path, dynamo=False, input_names=["image"], dynamic_axes={"image": {1: "h", 2: "w"}})
    traced = ort.InferenceSession(path).run(None, {"image": image.numpy()})[0]
    assert traced.shape == tuple(eager.shape)
    np.testing.assert_allclose(traced, eager.numpy(), atol=1e-4)  # ONNX Runtime's bilinear kernel, float32


def test_export_refuses_bad_arguments_before_building_anything(tmp_path):
    with pytest.raises(ValueError, match="unknown export format 'tflite'; choose one of: torchscript, onnx"):
        export_model("DEFAULT", "tflite", str(tmp_path / "m"), model=MODEL)
    with pytest.raises(ValueError, match="not a checkpoint: give --model"):
        export_model("DEFAULT", "onnx", str(tmp_path / "m.onnx"))
    with pytest.raises(ValueError, match="checkpoint .*model.pt not found"):
        export_model(str(tmp_path / "nothing"), "onnx", str(tmp_path / "m.onnx"))


def _calibrated_detector(calibration_images: list[torch.Tensor]) -> torch.nn.Module:
    """A randomly initialised detector whose detections are spread out, standing in for trained weights.

    There are no pretrained weights offline, and a random torchvision detector gives every box the same
    score (features collapse through its 0.01-std heads), which makes a parity check meaningless. One
    forward pass with hooks sets each frozen batch norm to its input's statistics and each conv/linear layer
    outside the backbone to unit-variance outputs (classification logits: std 3), so that scores and labels
    vary with the image as a trained model's do.
    """
    from torchvision.ops import FrozenBatchNorm2d

    def batch_norm_hook(mod, inputs, output):
        x = inputs[0]
        mod.running_mean.copy_(x.mean((0, 2, 3)))
        mod.running_var.copy_(x.var((0, 2, 3)))
        scale = mod.weight * (mod.running_var + mod.eps).rsqrt()
        return (x - mod.running_mean[None, :, None, None]) * scale[None, :, None, None] + mod.bias[None, :, None, None]

    def layer_hook(gain):
        def hook(mod, inputs, output):
            dims, shape = ((0, 2, 3), (1, -1, 1, 1)) if output.dim() == 4 else ((0,), (1, -1))
            mean, factor = output.mean(dims), gain / (output.std(dims) + 1e-6)
            mod.weight.mul_(factor.view(-1, *[1] * (mod.weight.dim() - 1)))
            if mod.bias is not None:
                mod.bias.copy_((mod.bias - mean) * factor)
            return (output - mean.view(shape)) * factor.view(shape)

        return hook

    torch.manual_seed(0)
    model = models.build_model(MODEL, models.default_categories(MODEL).num_classes).eval()
    hooks = [m.register_forward_hook(batch_norm_hook) for m in model.backbone.body.modules() if isinstance(m, FrozenBatchNorm2d)]
    for part in (model.backbone.fpn, model.rpn, model.roi_heads):
        for name, m in part.named_modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and "bbox_pred" not in name:
                hooks.append(m.register_forward_hook(layer_hook(3.0 if "cls" in name else 1.0)))
    with torch.no_grad():
        model(calibration_images)
    for h in hooks:
        h.remove()
    return model


@pytest.fixture(scope="module")
def checkpoint(coco128, tmp_path_factory) -> str:
    """A detbatch checkpoint of the calibrated detector, with COCO's category names."""
    from detbatch.export.exporter import _read_image, _to_tensor

    images = [_to_tensor(_read_image(str(coco128 / "images" / n))) for n in ("000000000009.jpg", "000000000025.jpg")]
    model = _calibrated_detector(images)
    path = tmp_path_factory.mktemp("export") / "model.pt"
    buf = io.BytesIO()
    torch.save(models.checkpoint_dict(model, MODEL, models.default_categories(MODEL)), buf)
    path.write_bytes(buf.getvalue())
    return str(path)


@pytest.mark.slow
def test_torchscript_export_reproduces_eager_on_coco128(checkpoint, coco128, tmp_path, capsys):
    out = tmp_path / "exported" / "detector.pt"
    glob = str(coco128 / "images" / "00000000007[2-9].jpg")  # 072, 073, 074, 077, 078: five sizes
    assert cli.main(["export", "--weights", checkpoint, "--format", "torchscript", "--out", str(out), "--check-images", glob]) == 0
    printed = capsys.readouterr().out
    matched, total = map(int, re.search(r"parity on 5 images .*: (\d+)/(\d+) detections matched", printed).groups())
    assert matched == total > 100, printed  # the calibrated model finds up to 100 per image

    names = models.default_categories(MODEL).to_list()
    assert json.loads((tmp_path / "exported" / "detector.pt.categories.json").read_text()) == names
    extra = {"categories.json": "", "detbatch.json": ""}
    scripted = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["categories.json"]) == names and json.loads(extra["detbatch.json"])["model"] == MODEL
    # Any batch of any sizes: two images of different shapes in one call.
    with torch.inference_mode():
        detections = scripted([torch.rand(3, 200, 300), torch.rand(3, 333, 250)])
    assert len(detections) == 2 and detections[1]["boxes"].shape[1] == 4
    assert float(detections[1]["boxes"][:, 2].max()) <= 250 and float(detections[1]["boxes"][:, 3].max()) <= 333


@pytest.mark.slow
def test_onnx_export_reproduces_eager_on_coco128(checkpoint, coco128, tmp_path):
    import onnx
    import onnxruntime as ort

    images = [str(coco128 / "images" / n) for n in CHECK_NAMES]
    out = tmp_path / "detector.onnx"
    result = export_model(checkpoint, "onnx", str(out), check_images=images)
    p = result.parity
    assert (p.images, result.model, result.format) == (4, MODEL, "onnx")
    assert p.detections > 100 and p.matched >= p.detections - 2, p  # at most a couple at a cutoff
    assert p.max_score_diff <= 1e-3 and p.max_box_diff <= 1e-3

    proto = onnx.load(str(out))
    props = {m.key: m.value for m in proto.metadata_props}
    assert json.loads(props["detbatch.categories"]) == models.default_categories(MODEL).to_list()
    assert props["detbatch.model"] == MODEL and props["detbatch.score_threshold"] == "0.05"
    session = ort.InferenceSession(str(out))
    boxes, labels, scores = session.run(None, {"image": np.random.rand(3, 240, 180).astype(np.float32)})
    assert boxes.shape == (len(labels), 4) and np.all(np.diff(scores) <= 0)
    with pytest.raises(Exception, match="Invalid rank for input: image"):  # one image per run
        session.run(None, {"image": np.random.rand(2, 3, 240, 180).astype(np.float32)})


def test_nothing_is_written_when_parity_fails(checkpoint, coco128, tmp_path, monkeypatch):
    """An export whose model finds nothing where the eager model finds 100 boxes is refused, and not written."""
    import detbatch.export.exporter as export

    monkeypatch.setattr(export, "_write_torchscript", lambda model, path, *args: open(path, "wb").close())
    empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64), "scores": np.zeros(0, np.float32)}
    monkeypatch.setattr(export, "_run_torchscript", lambda path, tensors, device="cpu": [empty for _ in tensors])
    out = tmp_path / "detector.pt"
    with pytest.raises(ParityError, match=r"000000000072.jpg: the eager model's detection .* nothing was written"):
        export_model(checkpoint, "torchscript", str(out), check_images=[str(coco128 / "images" / CHECK_NAMES[0])])
    assert not out.exists() and not (tmp_path / "detector.pt.categories.json").exists()
