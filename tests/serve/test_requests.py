"""detbatch/serve/requests.py and config.py without Ray: options, caps, decode reasons, URIs, the config."""

from __future__ import annotations

import asyncio

import pytest

from detbatch.config import ConfigError, load_config
from detbatch.detect.decode import decode_image
from detbatch.serve.config import ServeConfig
from detbatch.serve.requests import (
    DetectRequest,
    RequestError,
    check_length,
    check_threshold,
    decode_request_image,
    parse_json,
    parse_query,
    read_body,
    read_uri,
)
from tests.helpers.images import png_bytes


def _refused(call, *args) -> RequestError:
    with pytest.raises(RequestError) as e:
        call(*args)
    return e.value


def test_options_from_the_query_and_from_json():
    assert parse_query({}) == DetectRequest()
    assert parse_query({"score_threshold": "0.25"}) == DetectRequest(0.25)
    assert parse_json(b'{"uri": "s3://b/x.jpg", "score_threshold": 0.5}') == DetectRequest(0.5, "s3://b/x.jpg")


@pytest.mark.parametrize("call, arg, status, message", [
    (parse_query, {"threshold": "0.5"}, 422, "unknown query parameter 'threshold'; known: score_threshold"),
    (parse_query, {"score_threshold": "high"}, 422, "score_threshold 'high' is not a score in [0, 1]"),
    (parse_query, {"score_threshold": "-0.1"}, 422, "score_threshold '-0.1' is not a score in [0, 1]"),
    (parse_json, b'{"uri": "x.png", "extra": 1}', 422, "unknown field 'extra'; known: uri, score_threshold"),
    (parse_json, b'{"score_threshold": 0.5}', 422, "field 'uri' must be a non-empty string"),
    (parse_json, b'{"uri": "x.png", "score_threshold": true}', 422, "score_threshold True is not a score"),
    (parse_json, b'["x.png"]', 422, "expected a JSON object"),
    (parse_json, b'{"uri": ', 400, "body is not JSON"),
])
def test_bad_options_are_refused_naming_them(call, arg, status, message):
    error = _refused(call, arg)
    assert error.status == status and message in str(error)


def test_a_request_may_raise_the_models_threshold_never_lower_it():
    check_threshold(DetectRequest(0.3), 0.3)
    check_threshold(DetectRequest(None), 0.3)
    error = _refused(check_threshold, DetectRequest(0.2), 0.3)
    assert error.status == 422 and "score_threshold 0.2 is below the served model's 0.3" in str(error)


def test_body_size_is_refused_from_its_length_before_reading():
    check_length("100", 100)
    check_length(None, 100)
    check_length("10000", None)
    error = _refused(check_length, "101", 100)
    assert error.status == 413 and str(error).startswith("request body of 101 bytes exceeds input.max_bytes=100")
    assert _refused(check_length, "lots", 100).status == 400


def test_a_body_without_length_is_read_up_to_the_cap_and_no_further():
    pulled = []

    async def chunks():
        for i in range(10):
            pulled.append(i)
            yield b"x" * 40

    assert asyncio.run(read_body(chunks(), None)) == b"x" * 400
    pulled.clear()
    with pytest.raises(RequestError) as e:
        asyncio.run(read_body(chunks(), 100))
    assert e.value.status == 413 and "of 120 bytes exceeds input.max_bytes=100" in str(e.value)
    assert pulled == [0, 1, 2]  # the fourth chunk was never asked for


def test_decode_reasons_are_detects_and_caps_are_413():
    pixels = decode_request_image(png_bytes((1, 2, 3), (5, 4)), 20)
    assert pixels.shape == (4, 5, 3) and pixels[0, 0].tolist() == [1, 2, 3]
    over = _refused(decode_request_image, png_bytes(size=(5, 4)), 19)
    assert (over.status, str(over)) == (413, "image of 5x4 = 20 pixels exceeds input.max_pixels=19")
    truncated = png_bytes(size=(64, 64))[:60]
    for data in (b"plain text", truncated):
        error = _refused(decode_request_image, data, None)
        assert (error.status, str(error)) == (400, decode_image(data)[1])  # detect's reason, word for word
    assert _refused(decode_request_image, b"", None).status == 400


def test_uris_only_under_the_allowed_prefixes(tmp_path):
    allowed = tmp_path / "images"
    allowed.mkdir()
    (allowed / "a.png").write_bytes(png_bytes(size=(8, 8)))
    (tmp_path / "secret.png").write_bytes(png_bytes(size=(8, 8)))
    prefixes = [str(allowed)]
    assert read_uri(str(allowed / "a.png"), prefixes, None) == png_bytes(size=(8, 8))
    cases = {
        str(tmp_path / "secret.png"): 403,                    # outside
        f"{allowed}/../secret.png": 403,                      # climbs out
        f"{allowed}-other/a.png": 403,                        # a sibling that shares the prefix's text
        str(allowed / "missing.png"): 404,
    }
    for uri, status in cases.items():
        assert _refused(read_uri, uri, prefixes, None).status == status, uri
    assert "input.uri_prefixes is empty" in str(_refused(read_uri, str(allowed / "a.png"), [], None))
    big = _refused(read_uri, str(allowed / "a.png"), prefixes, 10)
    assert big.status == 413 and "file a.png of" in str(big) and "exceeds input.max_bytes=10" in str(big)


def test_config_defaults_and_checks():
    config = load_config(ServeConfig, None, {})
    assert (config.batching.max_batch_size, config.max_ongoing_requests) == (8, 16)
    assert config.input.max_pixels == 100_000_000 and config.input.uri_prefixes == []
    assert load_config(ServeConfig, None, {"replicas.num_replicas": "auto"}).replicas.num_replicas == "auto"
    for bad in ({"replicas.num_replicas": 0}, {"replicas.min_replicas": 5, "replicas.max_replicas": 2},
                {"replicas.max_ongoing_requests": 4}, {"batching.max_batch_szie": 4}):
        with pytest.raises(ConfigError):
            load_config(ServeConfig, None, bad)


def test_cli_flags_reach_the_config():
    from detbatch.cli import SERVE_FLAGS, build_parser, load_job_config

    args = build_parser().parse_args(["serve", "--weights", "/m/model.pt", "--replicas", "auto", "--port", "9000",
                                      "--max-batch-size", "4", "--allow-uri", "s3://b/", "--allow-uri", "/data"])
    config = load_job_config(ServeConfig, args, SERVE_FLAGS)
    assert (config.model.weights, config.replicas.num_replicas, config.http.port) == ("/m/model.pt", "auto", 9000)
    assert config.batching.max_batch_size == 4 and config.input.uri_prefixes == ["s3://b/", "/data"]


def test_the_shipped_configs_are_valid():
    """configs/serve.yaml loads; configs/serve-app.yaml is a valid Serve config whose args load the same way."""
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    repo = Path(__file__).resolve().parents[2]
    config = load_config(ServeConfig, str(repo / "configs" / "serve.yaml"))
    assert config.replicas.num_replicas == "auto" and config.input.uri_prefixes == ["s3://my-bucket/images/"]
    app = yaml.safe_load((repo / "configs" / "serve-app.yaml").read_text())
    ServeDeploySchema.model_validate(app)
    (entry,) = app["applications"]
    assert entry["import_path"] == "detbatch.serve.app:app_builder"
    config = load_config(ServeConfig, None, None, entry["args"])  # as app_builder reads them
    assert (config.batching.max_batch_size, config.replicas.max_replicas) == (16, 8)
