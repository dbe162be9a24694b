import io

import pytest
import torch

from detbatch import models, storage


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match=r"unknown model 'fasterrcnn_r50'; choose one of: .*fasterrcnn_resnet50_fpn_v2"):
        models.check_weights("fasterrcnn_r50", "none")


def test_unknown_weights_lists_choices():
    with pytest.raises(ValueError, match=r"unknown weights 'IMAGENET' for ssd300_vgg16; choose one of: DEFAULT, COCO_V1"):
        models.check_weights("ssd300_vgg16", "IMAGENET")


@pytest.mark.parametrize("weights", ["DEFAULT", "COCO_V1", "SSDLite320_MobileNet_V3_Large_Weights.COCO_V1"])
def test_weights_names_resolve(weights):
    member = models.detectors._weights_enum("ssdlite320_mobilenet_v3_large", weights)
    assert member.name == "COCO_V1"


def test_random_init_keeps_coco_names():
    loaded = models.build_detector("ssdlite320_mobilenet_v3_large", "none", 0.2, 10)
    assert loaded.categories.labels[1] == (1, "person") and loaded.categories.labels[12] is None
    assert not loaded.model.training and loaded.model.score_thresh == 0.2 and loaded.model.detections_per_img == 10


def test_checkpoint_round_trip_brings_its_categories(tmp_path, s3_bucket):
    cats = models.Categories.from_coco([{"id": 7, "name": "square"}, {"id": 3, "name": "circle"}])
    assert cats.labels == (None, (3, "circle"), (7, "square"))
    model = models.build_model("fasterrcnn_mobilenet_v3_large_320_fpn", cats.num_classes)
    buf = io.BytesIO()
    torch.save(models.checkpoint_dict(model, "fasterrcnn_mobilenet_v3_large_320_fpn", cats, epoch=3), buf)
    for uri in (str(tmp_path / "ckpt"), f"{s3_bucket}/run/ckpt"):
        storage.write_bytes(storage.join(uri, "model.pt"), buf.getvalue())
        models.check_weights("anything", uri)
        loaded = models.build_detector("ssd300_vgg16", uri)  # the checkpoint names its own model
        assert loaded.name == "fasterrcnn_mobilenet_v3_large_320_fpn" and loaded.categories == cats
        key = "roi_heads.box_predictor.cls_score.weight"
        assert torch.equal(loaded.model.state_dict()[key], model.state_dict()[key])


def test_missing_checkpoint_is_clear(tmp_path):
    with pytest.raises(ValueError, match="checkpoint .*model.pt not found"):
        models.check_weights("ssd300_vgg16", str(tmp_path / "nothing"))


def test_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a detbatch checkpoint"):
        models.load_checkpoint(str(path))
