"""The shared config machinery of detbatch/config.py: loading, overrides, ``--set`` parsing, error messages.

The configs of each job are tested beside the job (tests/detect/test_config.py, tests/training/test_config.py).
"""

import pytest

from detbatch.config import ConfigError, load_config, parse_assignment

from detbatch.detect.config import DetectConfig


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


def test_missing_config_file_is_named(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=rf"config file {path} not found"):
        load_config(DetectConfig, str(path))


@pytest.mark.parametrize(
    "text, message",
    [("inference: [1, 2\n", "is not valid YAML"), ("- a\n- b\n", "must hold a mapping of sections, got list")],
)
def test_unusable_config_file_is_named(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"config file {path} {message}"):
        load_config(DetectConfig, str(path))


def test_empty_config_file_gives_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# nothing set\n")
    assert load_config(DetectConfig, str(path)) == DetectConfig()


def test_override_below_a_value_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inference:\n  batch_size: 4\n")
    with pytest.raises(ConfigError, match=r"cannot set 'inference.batch_size.x': 'batch_size' is not a section"):
        load_config(DetectConfig, str(path), {"inference.batch_size.x": 1})


def test_config_file_from_s3(s3_bucket):
    from detbatch import storage

    uri = f"{s3_bucket}/configs/c.yaml"
    storage.write_text(uri, "inference:\n  max_actors: 5\n")
    assert load_config(DetectConfig, uri).inference.max_actors == 5
    with pytest.raises(ConfigError, match=rf"config file {s3_bucket}/configs/missing.yaml not found"):
        load_config(DetectConfig, f"{s3_bucket}/configs/missing.yaml")
