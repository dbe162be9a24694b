"""``EvaluateConfig``: configs/evaluate.yaml, and the CLI's flags and ``--set`` on top of a config file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from detbatch.cli import EVALUATE_FLAGS, build_parser, load_job_config, main
from detbatch.config import ConfigError, load_config
from detbatch.evaluate import EvaluateConfig, summary_lines
from detbatch.evaluate.config import REQUIRED_KEYS

from tests.evaluate.runs import setup_run

SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "evaluate.yaml"


def _cli_config(*argv: str) -> EvaluateConfig:
    return load_job_config(EvaluateConfig, build_parser().parse_args(["evaluate", *argv]), EVALUATE_FLAGS)


def _config_file(tmp_path: Path, keys: dict) -> str:
    path = tmp_path / "evaluate.yaml"
    path.write_text(yaml.safe_dump(keys))
    return str(path)


def test_shipped_config_validates_and_documents_every_key_with_its_default():
    config = load_config(EvaluateConfig, str(SHIPPED))
    assert set(yaml.safe_load(SHIPPED.read_text())) == set(EvaluateConfig.model_fields)
    assert all(getattr(config, key) for key in REQUIRED_KEYS)  # examples: these have no default
    for key, field in EvaluateConfig.model_fields.items():
        if key not in REQUIRED_KEYS:
            assert getattr(config, key) == field.default, key


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="bogus"):
        EvaluateConfig(detections="r", ground_truth="g", out="o", bogus=1)


def test_unknown_key_in_the_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'metirc'"):
        load_config(EvaluateConfig, _config_file(tmp_path, {"metirc": "voc"}))


def test_flags_and_set_override_the_file(tmp_path):
    path = _config_file(tmp_path, {"detections": "file-run", "out": "file-out", "metric": "coco", "plot_categories": 3})
    config = _cli_config("--config", path, "--out", "flag-out", "--ground-truth", "gt.json",
                         "--set", "metric=voc", "--set", "use_ray=false")
    assert (config.detections, config.ground_truth, config.out) == ("file-run", "gt.json", "flag-out")
    assert (config.metric, config.use_ray, config.plot_categories) == ("voc", False, 3)


def test_a_key_given_by_flag_and_by_set_is_an_error():
    with pytest.raises(ConfigError, match=r"pair_by is given twice, by --pair-by 'file_name' and by --set pair_by='image_id'"):
        _cli_config("--pair-by", "file_name", "--set", "pair_by=image_id")


def test_a_bad_value_by_set_names_the_key():
    with pytest.raises(ConfigError, match=r"plot_categories.*got -1"):
        _cli_config("--set", "plot_categories=-1")


@pytest.mark.parametrize("key, flag", list(REQUIRED_KEYS.items()))
def test_a_missing_input_names_the_flag_and_the_key(key, flag, capsys):
    given = [a for k, f in REQUIRED_KEYS.items() if k != key for a in (f, f"{k}-value")]
    assert main(["evaluate", *given]) == 2
    assert f"{key} is not set; give {flag} URI or set {key} in the config file" in capsys.readouterr().err


def test_cli_evaluates_what_the_config_file_names(tmp_path, capsys):
    _, _, gt_uri, run = setup_run(str(tmp_path))
    path = _config_file(tmp_path, {"detections": run, "ground_truth": gt_uri, "metric": "voc"})
    assert main(["evaluate", "--config", path, "--out", str(tmp_path / "e")]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["metric"] == "voc" and metrics["inputs"]["detections"] == run
    assert capsys.readouterr().out.splitlines()[:2] == summary_lines(metrics)
