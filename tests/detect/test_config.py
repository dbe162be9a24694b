"""``DetectConfig``: the shipped detect configs, and the checks the detect sections add."""

from pathlib import Path

import pytest

from detbatch.config import ConfigError, load_config
from detbatch.detect.config import DetectConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["detect.yaml", "local.yaml"])
def test_shipped_configs_validate(name):
    config = load_config(DetectConfig, str(CONFIGS / name))
    assert config.input.uri and config.output.uri


@pytest.mark.parametrize("fraction", [0, 1.5])
def test_object_store_fraction_is_a_share(fraction):
    with pytest.raises(ConfigError, match=rf"inference.object_store_fraction.*got {fraction}"):
        load_config(DetectConfig, None, {"inference.object_store_fraction": fraction})
    assert load_config(DetectConfig, None, {"inference.object_store_fraction": 0.1}).inference.object_store_fraction == 0.1


def test_pool_bounds_checked():
    with pytest.raises(ConfigError, match=r"min_actors \(3\) > max_actors \(2\)"):
        load_config(DetectConfig, None, {"inference.min_actors": 3, "inference.max_actors": 2})


def test_missing_io_is_an_error():
    with pytest.raises(ConfigError, match="input.uri is not set; give --input"):
        DetectConfig().require_io()
