import io

import pytest
import torch

from detbatch import models, storage
from detbatch.config import ConfigError


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


def test_tiny_fcos_needs_a_checkpoint_for_its_categories():
    with pytest.raises(ConfigError, match=r"tiny_fcos has no pretrained categories; give --weights a checkpoint URI"):
        models.build_detector("tiny_fcos", "none")


def test_tiny_fcos_checkpoint_loads_in_eval_mode(tmp_path):
    cats = models.Categories.from_coco([{"id": 1, "name": "square"}])
    torch.manual_seed(0)
    model = models.build_model("tiny_fcos", cats.num_classes, min_size=64, max_size=64)
    path = tmp_path / "tiny.pt"
    torch.save(models.checkpoint_dict(model, "tiny_fcos", cats, {"min_size": 64, "max_size": 64}), path)
    loaded = models.build_detector("tiny_fcos", str(path), 0.3, 7)
    assert (loaded.name, loaded.weights, loaded.categories) == ("tiny_fcos", str(path), cats)
    assert not loaded.model.training and loaded.model.score_thresh == 0.3 and loaded.model.detections_per_img == 7
    assert loaded.model.transform.min_size == (64,)  # the builder arguments saved in the checkpoint
    assert torch.equal(loaded.model.state_dict()["head.classification_head.cls_logits.weight"],
                       model.state_dict()["head.classification_head.cls_logits.weight"])  # fmt: skip
