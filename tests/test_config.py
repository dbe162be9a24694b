from pathlib import Path

import pytest

from detbatch.cli import build_parser
from detbatch.config import ConfigError, load_config, parse_assignment

from detbatch.detect.config import DetectConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["detect.yaml", "local.yaml"])
def test_shipped_configs_validate(name):
    config = load_config(DetectConfig, str(CONFIGS / name))
    assert config.input.uri and config.output.uri


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: ssd300_vgg16\n  score_treshold: 0.3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'model.score_treshold'"):
        load_config(DetectConfig, str(path))


def test_unknown_section_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("modle:\n  name: x\n")
    with pytest.raises(ConfigError, match="unknown key 'modle'"):
        load_config(DetectConfig, str(path))


def test_bad_value_names_key_and_value(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inference:\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match=r"inference.batch_size.*got 0"):
        load_config(DetectConfig, str(path))


@pytest.mark.parametrize("fraction", [0, 1.5])
def test_object_store_fraction_is_a_share(fraction):
    with pytest.raises(ConfigError, match=rf"inference.object_store_fraction.*got {fraction}"):
        load_config(DetectConfig, None, {"inference.object_store_fraction": fraction})
    assert load_config(DetectConfig, None, {"inference.object_store_fraction": 0.1}).inference.object_store_fraction == 0.1


def test_pool_bounds_checked():
    with pytest.raises(ConfigError, match=r"min_actors \(3\) > max_actors \(2\)"):
        load_config(DetectConfig, None, {"inference.min_actors": 3, "inference.max_actors": 2})


def test_flags_override_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("input:\n  uri: a\nmodel:\n  score_threshold: 0.5\ninference:\n  batch_size: 4\n")
    config = load_config(DetectConfig, str(path), {"model.score_threshold": 0.25, "inference.batch_size": None})
    assert config.model.score_threshold == 0.25
    assert config.inference.batch_size == 4  # None means "flag not given"
    assert config.input.uri == "a"


def test_set_assignment_parses_yaml_values():
    assert parse_assignment("inference.batch_size=16") == ("inference.batch_size", 16)
    assert parse_assignment("inference.actor_resources={a: 1}") == ("inference.actor_resources", {"a": 1})
    with pytest.raises(ConfigError, match="SECTION.KEY=VALUE"):
        parse_assignment("batch_size")


def test_missing_io_is_an_error():
    with pytest.raises(ConfigError, match="input.uri is not set; give --input"):
        DetectConfig().require_io()


def test_cli_reports_config_errors(tmp_path, capsys):
    from detbatch.cli import main

    path = tmp_path / "c.yaml"
    path.write_text("inference:\n  batch_sise: 4\n")
    assert main(["detect", "--config", str(path), "--input", "x", "--output", "y"]) == 2
    assert "unknown key 'inference.batch_sise'" in capsys.readouterr().err


def test_cli_parses_every_documented_flag():
    args = build_parser().parse_args(
        ["detect", "--config", "c", "--input", "i", "--output", "o", "--model", "m", "--weights", "none",
         "--score-threshold", "0.3", "--batch-size", "2", "--overwrite"]
    )
    assert (args.input, args.output, args.model, args.weights, args.score_threshold, args.batch_size, args.overwrite) == (
        "i", "o", "m", "none", 0.3, 2, True)
