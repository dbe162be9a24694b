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


def test_a_resume_refuses_a_changed_split_or_optimizer_and_applies_the_rest(tmp_path, caplog):
    """A changed seed or validation fraction would train on former validation images; another optimizer
    cannot load the saved state (it used to crash with KeyError). Other settings are applied and logged."""
    import logging

    from detbatch.models import Categories
    from detbatch.training.job import _check_run

    run = str(tmp_path / "run")
    shapes = Categories.from_coco([{"id": 1, "name": "square"}])
    _check_run(run, load_config(TrainConfig, None, {}), shapes)
    for key, value in (("data.seed", 7), ("data.val_fraction", 0.3), ("optim.optimizer", "adamw")):
        with pytest.raises(ConfigError, match=rf"{key}: .* -> {value!r}.*new --name"):
            _check_run(run, load_config(TrainConfig, None, {key: value}), shapes)
    with caplog.at_level(logging.WARNING, logger="detbatch.training.job"):
        _check_run(run, load_config(TrainConfig, None, {"schedule.epochs": 40, "scaling.num_workers": 3}), shapes)
    assert "changed settings" not in caplog.text  # more epochs, other resources: a plain resume
    with caplog.at_level(logging.WARNING, logger="detbatch.training.job"):
        _check_run(run, load_config(TrainConfig, None, {"optim.lr": 0.1}), shapes)
    assert "optim.lr: 0.02 -> 0.1" in caplog.text


def test_a_resumed_optimizer_takes_the_configs_learning_rate():
    """The saved scheduler state carries the old base lr: without applying the config's, --lr is ignored."""
    from functools import partial

    import torch

    from detbatch.training.config import OptimConfig, ScheduleConfig
    from detbatch.training.loop import apply_optim_settings, lr_factor, make_optimizer

    schedule = ScheduleConfig(epochs=2, warmup_iters=0, kind="cosine")
    weights = [torch.nn.Parameter(torch.ones(3))]

    def fresh(cfg):
        optimizer = make_optimizer(weights, cfg)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, steps_per_epoch=5, schedule=schedule))

    old, old_sched = fresh(OptimConfig(lr=0.02, momentum=0.9))
    for _ in range(3):
        old.step()
        old_sched.step()
    new_cfg = OptimConfig(lr=0.1, momentum=0.5, weight_decay=0.0)
    optimizer, scheduler = fresh(new_cfg)
    optimizer.load_state_dict(old.state_dict())
    scheduler.load_state_dict(old_sched.state_dict())
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02 * lr_factor(3, steps_per_epoch=5, schedule=schedule))
    apply_optim_settings(optimizer, scheduler, new_cfg)
    group = optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(0.1 * lr_factor(3, steps_per_epoch=5, schedule=schedule))
    assert (group["momentum"], group["weight_decay"]) == (0.5, 0.0)
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * lr_factor(4, steps_per_epoch=5, schedule=schedule))
