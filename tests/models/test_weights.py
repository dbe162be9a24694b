"""parse_weights and check_weights: the one reading of a ``weights`` string, for detect, train and export."""

import io

import pytest
import torch

from detbatch import storage
from detbatch.config import ConfigError
from detbatch.errors import InputError
from detbatch.models import Categories, build_model, check_weights, checkpoint_dict, load_checkpoint, parse_weights

SHAPES = Categories.from_coco([{"id": 1, "name": "square"}, {"id": 2, "name": "circle"}])


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match=r"unknown model 'fasterrcnn_r50'; choose one of: .*fasterrcnn_resnet50_fpn_v2"):
        check_weights("fasterrcnn_r50", "none")


def test_unknown_weights_lists_choices():
    with pytest.raises(ValueError, match=r"unknown weights 'IMAGENET' for ssd300_vgg16; choose one of: DEFAULT, COCO_V1"):
        check_weights("ssd300_vgg16", "IMAGENET")


@pytest.mark.parametrize("weights", ["DEFAULT", "COCO_V1", "SSDLite320_MobileNet_V3_Large_Weights.COCO_V1"])
def test_weights_names_resolve(weights):
    spec = parse_weights("ssdlite320_mobilenet_v3_large", weights)
    assert spec.kind == "torchvision"
    assert spec.member.name == "COCO_V1"
    assert spec.weights == "SSDLite320_MobileNet_V3_Large_Weights.COCO_V1"  # what detect records as loaded
    assert spec.member.meta["categories"][1] == "person"  # the enum's metadata; nothing is downloaded


@pytest.mark.parametrize("name", ["tiny_fcos", "fasterrcnn_resnet50_fpn_v2"])
@pytest.mark.parametrize("weights", ["none", "None", "NONE"])
def test_none_means_random_initialisation(name, weights):
    spec = parse_weights(name, weights)
    assert (spec.kind, spec.weights, spec.member) == ("none", "none", None)


@pytest.mark.parametrize(
    "name, weights, message",
    [
        ("tiny_fcoss", "none", r"^unknown model 'tiny_fcoss'; choose one of: .*tiny_fcos"),
        ("tiny_fcos", "DEFAULT", r"^tiny_fcos has no torchvision weights; give --weights none or a checkpoint URI$"),
        (None, "COCO_V1", r"^--weights 'COCO_V1' is not a checkpoint: give --model"),
        # The full name must be the model's own enum's.
        ("ssdlite320_mobilenet_v3_large", "SSD300_VGG16_Weights.COCO_V1",
         r"^unknown weights 'SSD300_VGG16_Weights.COCO_V1' for ssdlite320_mobilenet_v3_large; choose one of: DEFAULT, "),
    ],
)
def test_bad_names_are_config_errors_naming_the_fix(name, weights, message):
    with pytest.raises(ConfigError, match=message):
        parse_weights(name, weights)


@pytest.mark.parametrize("uri", ["runs/7/checkpoint", "model.pt", "s3://bucket/runs/7", "/abs/path/ckpt.pt"])
def test_paths_and_uris_are_checkpoints_read_lazily(uri):
    # Nothing exists there: parsing reads no file, and the checkpoint names its own model.
    for name in ("anything", None):
        spec = parse_weights(name, uri)
        assert (spec.kind, spec.weights, spec.member) == ("checkpoint", uri, None)


@pytest.mark.parametrize("layout", ["file", "folder"])
def test_checkpoint_written_here_is_found_and_loads(tmp_path, layout):
    model = build_model("tiny_fcos", SHAPES.num_classes)
    buf = io.BytesIO()
    torch.save(checkpoint_dict(model, "tiny_fcos", SHAPES, {"min_size": 64}), buf)
    uri = str(tmp_path / "ckpt.pt") if layout == "file" else str(tmp_path / "ckpt")
    storage.write_bytes(uri if layout == "file" else storage.join(uri, "model.pt"), buf.getvalue())

    spec = check_weights("ssd300_vgg16", uri)  # the name does not matter: the checkpoint names its model
    assert (spec.kind, spec.weights) == ("checkpoint", uri)
    ckpt = load_checkpoint(spec.weights)
    assert ckpt["model"] == {"name": "tiny_fcos", "kwargs": {"min_size": 64}}
    assert Categories.from_list(ckpt["categories"]) == SHAPES
    assert torch.equal(ckpt["state_dict"]["head.classification_head.cls_logits.weight"],
                       model.state_dict()["head.classification_head.cls_logits.weight"])  # fmt: skip


def test_missing_checkpoint_is_clear(tmp_path):
    with pytest.raises(ValueError, match="checkpoint .*model.pt not found"):
        check_weights("ssd300_vgg16", str(tmp_path / "nothing"))


def test_missing_checkpoint_is_an_input_error(tmp_path):
    uri = str(tmp_path / "nothing")
    assert parse_weights("tiny_fcos", uri).kind == "checkpoint"
    with pytest.raises(InputError, match=r"checkpoint .*nothing/model.pt not found \(check --weights\)"):
        check_weights("tiny_fcos", uri)
