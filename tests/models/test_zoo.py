import sys

import pytest

from detbatch import models
from detbatch.config import ConfigError


def test_one_table_lists_torchvision_and_detbatch_models():
    assert models.model_names() == sorted(models.MODELS)
    assert "tiny_fcos" in models.MODELS and "fasterrcnn_resnet50_fpn_v2" in models.MODELS
    assert [n for n, e in models.MODELS.items() if not e.torchvision] == ["tiny_fcos", "null"] == list(models.EXTRA_MODELS)


def test_listing_models_does_not_import_torchvision():
    # `detbatch models` should start fast: the table names builders, it does not import them.
    import subprocess

    code = "import sys, detbatch.models as m; m.model_names(); print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match=r"unknown model 'yolo'; choose one of: "):
        models.build_model("yolo", 2)


@pytest.mark.parametrize(
    "name, settings",
    [
        ("tiny_fcos", lambda m: (m.score_thresh, m.detections_per_img)),
        ("fasterrcnn_mobilenet_v3_large_320_fpn", lambda m: (m.roi_heads.score_thresh, m.roi_heads.detections_per_img)),
        ("ssdlite320_mobilenet_v3_large", lambda m: (m.score_thresh, m.detections_per_img)),
    ],
)
def test_build_model_passes_the_settings_each_builder_spells_its_own_way(name, settings):
    model = models.build_model(name, 3, score_threshold=0.25, detections_per_image=9)
    assert settings(model) == (0.25, 9)


def test_extra_models_still_build():
    model = models.EXTRA_MODELS["tiny_fcos"](num_classes=3, score_threshold=0.4)
    assert model.score_thresh == 0.4 and model.head.classification_head.num_classes == 3
