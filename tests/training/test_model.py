"""Starting models: head replacement, backbone carry-over from a checkpoint, freezing."""

from __future__ import annotations

import io

import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from detbatch import storage
from detbatch.config import ConfigError
from detbatch.models import Categories, build_detector, build_model, checkpoint_dict, replace_box_predictor
from detbatch.training.config import ModelConfig
from detbatch.training.model import build_starting_model, check_model_config

SHAPES = Categories.from_coco([{"id": 1, "name": "square"}, {"id": 2, "name": "circle"}, {"id": 3, "name": "triangle"}])
FRUIT = Categories.from_coco([{"id": 7, "name": "apple"}, {"id": 9, "name": "pear"}])


def _save(model: torch.nn.Module, categories: Categories, path) -> str:
    buf = io.BytesIO()
    torch.save(checkpoint_dict(model, "tiny_fcos", categories, {}), buf)
    storage.write_bytes(str(path), buf.getvalue())
    return str(path)


@pytest.fixture
def source_checkpoint(tmp_path):
    torch.manual_seed(3)
    model = build_model("tiny_fcos", SHAPES.num_classes)
    with torch.no_grad():  # distinctive BN statistics, to see that they carry over
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model.state_dict(), _save(model, SHAPES, tmp_path / "source.pt")


def test_finetune_onto_other_categories_replaces_head_and_carries_backbone(source_checkpoint):
    source, uri = source_checkpoint
    torch.manual_seed(0)
    start = build_starting_model(ModelConfig(name="tiny_fcos", weights=uri), FRUIT)
    state = start.model.state_dict()
    head = start.model.head.classification_head
    assert head.num_classes == FRUIT.num_classes == 3
    assert head.cls_logits.out_channels == FRUIT.num_classes
    assert not torch.equal(state["head.classification_head.cls_logits.weight"][:3], source["head.classification_head.cls_logits.weight"][:3])
    carried = [k for k in source if not k.startswith("head.classification_head.cls_logits") and not k.endswith("num_batches_tracked")]
    assert any(k.startswith("backbone.") for k in carried) and any(k.startswith("head.regression_head") for k in carried)
    for k in carried:
        assert torch.equal(state[k], source[k]), k
    # Started from trained weights: BatchNorm statistics frozen (torchvision's FrozenBatchNorm2d).
    assert any(isinstance(m, FrozenBatchNorm2d) for m in start.model.backbone.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in start.model.backbone.modules())
    assert "replaced" in start.description


def test_same_categories_keep_the_head(source_checkpoint):
    source, uri = source_checkpoint
    start = build_starting_model(ModelConfig(name="tiny_fcos", weights=uri), SHAPES)
    assert torch.equal(start.model.state_dict()["head.classification_head.cls_logits.weight"],
                       source["head.classification_head.cls_logits.weight"])  # fmt: skip


def test_finetuned_checkpoint_loads_for_detect(source_checkpoint, tmp_path):
    _, uri = source_checkpoint
    start = build_starting_model(ModelConfig(name="tiny_fcos", weights=uri), FRUIT)
    out = _save(start.model, FRUIT, tmp_path / "finetuned.pt")
    loaded = build_detector("tiny_fcos", out)  # strict load into a fresh (unfrozen) model
    assert loaded.categories == FRUIT
    with torch.inference_mode():
        (result,) = loaded.model([torch.rand(3, 48, 64)])
    assert set(result) == {"boxes", "labels", "scores"}


def test_trainable_backbone_layers_freezes_the_rest(source_checkpoint):
    _, uri = source_checkpoint
    start = build_starting_model(ModelConfig(name="tiny_fcos", weights=uri, trainable_backbone_layers=1), FRUIT)
    body = start.model.backbone.body
    assert not any(p.requires_grad for p in body.stem.parameters())
    assert not any(p.requires_grad for p in body.stage2.parameters())
    assert all(p.requires_grad for p in body.stage3.parameters())
    assert all(p.requires_grad for p in start.model.head.parameters())
    with pytest.raises(ConfigError, match="choose 0..3"):
        build_starting_model(ModelConfig(name="tiny_fcos", weights=uri, trainable_backbone_layers=4), FRUIT)


def test_from_scratch_keeps_batchnorm_trainable():
    start = build_starting_model(ModelConfig(name="tiny_fcos", weights="none"), FRUIT)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in start.model.backbone.modules())
    assert start.model.head.classification_head.num_classes == 3


@pytest.mark.parametrize(
    "name, predictor",
    [
        ("fasterrcnn_mobilenet_v3_large_320_fpn", lambda m: m.roi_heads.box_predictor.cls_score.out_features),
        ("fcos_resnet50_fpn", lambda m: m.head.classification_head.cls_logits.out_channels),
        ("ssdlite320_mobilenet_v3_large", lambda m: m.head.classification_head.num_columns),
    ],
)
def test_replace_box_predictor_of_torchvision_detectors(name, predictor):
    small = {"min_size": 128, "max_size": 128} if not name.startswith("ssd") else {}
    model = build_model(name, 91, **small)
    kept = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    replace_box_predictor(model, FRUIT.num_classes)
    assert predictor(model) == FRUIT.num_classes
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in kept.items())
    model.train()
    target = {"boxes": torch.tensor([[10.0, 20, 100, 150]]), "labels": torch.tensor([2])}
    losses = model([torch.rand(3, 160, 160)] * 2, [target] * 2)  # two images: BatchNorm in train mode
    assert all(torch.isfinite(v) for v in losses.values())


def test_bad_model_settings_fail_fast(tmp_path):
    with pytest.raises(ConfigError, match="unknown weights 'COCO_V9'"):
        check_model_config(ModelConfig(name="fasterrcnn_resnet50_fpn_v2", weights="COCO_V9"))
    with pytest.raises(ConfigError, match="no pretrained backbone"):
        check_model_config(ModelConfig(name="tiny_fcos", weights="none", weights_backbone="DEFAULT"))
    with pytest.raises(ConfigError, match="ResNet50_Weights.IMAGENET1K_V1"):
        check_model_config(ModelConfig(name="fasterrcnn_resnet50_fpn_v2", weights="none", weights_backbone="IMAGENET"))
    with pytest.raises(ValueError, match="not found"):
        check_model_config(ModelConfig(weights=str(tmp_path / "missing")))
