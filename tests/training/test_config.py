"""``TrainConfig`` and the ``train`` command line: every key checked, errors that name the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from detbatch.cli import main
from detbatch.config import ConfigError, load_config
from detbatch.training import TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["train.yaml", "demo-train.yaml"])
def test_shipped_configs_load(name):
    config = load_config(TrainConfig, str(CONFIGS / name))
    assert config.data.train_annotations or config.data.train_shards


def test_unknown_key_and_bad_values_are_named():
    with pytest.raises(ConfigError, match="unknown key 'optim.learning_rate'"):
        load_config(TrainConfig, None, {"optim.learning_rate": 0.1})
    with pytest.raises(ConfigError, match="scale_jitter"):
        load_config(TrainConfig, None, {"data.scale_jitter": [1.5, 1.0]})
    with pytest.raises(ConfigError, match="not both"):
        load_config(TrainConfig, None, {"data.train_annotations": "a.json", "data.train_shards": "s/"})
    with pytest.raises(ConfigError, match="model.kwargs may not set"):
        load_config(TrainConfig, None, {"model.kwargs": {"num_classes": 3}})


def test_cli_without_data_explains(capsys):
    assert main(["train", "--epochs", "1"]) == 2
    assert "--train-annotations" in capsys.readouterr().err


def test_cli_flags_reach_the_config(tmp_path, capsys):
    missing = tmp_path / "nope.json"
    assert main(["train", "--train-annotations", str(missing), "--epochs", "1", "--num-workers", "3"]) == 2
    assert str(missing) in capsys.readouterr().err


def test_a_rerun_must_train_the_same_model_on_the_same_categories(tmp_path):
    from detbatch.models import Categories
    from detbatch.training.job import _check_run

    run = str(tmp_path / "run")
    shapes = Categories.from_coco([{"id": 1, "name": "square"}])
    _check_run(run, load_config(TrainConfig, None, {}), shapes)  # first run: recorded
    _check_run(run, load_config(TrainConfig, None, {"optim.lr": 0.1}), shapes)  # other settings may change
    with pytest.raises(ConfigError, match="model: 'tiny_fcos' -> 'fcos_resnet50_fpn'.*new --name"):
        _check_run(run, load_config(TrainConfig, None, {"model.name": "fcos_resnet50_fpn"}), shapes)
    with pytest.raises(ConfigError, match="categories"):
        _check_run(run, load_config(TrainConfig, None, {}), Categories.from_coco([{"id": 2, "name": "circle"}]))


def test_local_paths_become_absolute_for_the_workers(tmp_path, monkeypatch):
    from detbatch.training.job import absolute_paths

    monkeypatch.chdir(tmp_path)
    config = absolute_paths(load_config(TrainConfig, None, {
        "data.train_annotations": "data/a.json", "data.val_images": "file://v/images", "model.weights": "runs/x/model.pt",
        "run.storage_path": "runs", "run.model_uri": "s3://b/model",
    }))  # fmt: skip
    assert config.data.train_annotations == str(tmp_path / "data/a.json")
    assert config.data.val_images == str(tmp_path / "v/images")
    assert config.model.weights == str(tmp_path / "runs/x/model.pt")
    assert (config.run.storage_path, config.run.model_uri) == (str(tmp_path / "runs"), "s3://b/model")
    assert config.data.train_images is None
