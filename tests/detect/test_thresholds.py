"""``--score-threshold thresholds.json``: a score threshold per category, as ``detbatch evaluate`` writes them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detbatch import storage
from detbatch.config import ConfigError, load_config
from detbatch.detect.config import DetectConfig
from detbatch.detect.output import open_output
from detbatch.detect.thresholds import ScoreThresholds, parse_score_threshold, read_thresholds
from detbatch.detect.units import list_input
from detbatch.errors import DetbatchError, InputError
from tests.detect.test_detector import _decoded_batch
from tests.helpers.exactly_once import write_input, write_tiny_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")


def _write(tmp_path, data, name="thresholds.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_a_file_of_thresholds_and_a_number(tmp_path):
    uri = _write(tmp_path, {"per_category": {"3": 0.4, "1": 0.25}, "default": 0.6})
    t = parse_score_threshold(uri)
    assert (t.default, t.per_category, t.floor) == (0.6, {1: 0.25, 3: 0.4}, 0.25)
    assert t.fingerprint() == {"default": 0.6, "per_category": {"1": 0.25, "3": 0.4}}
    assert ScoreThresholds.from_fingerprint(t.fingerprint()) == t
    keep = t.keep(np.array([1, 1, 3, 3, 2]), np.array([0.2, 0.3, 0.39, 0.5, 0.6]))
    assert keep.tolist() == [False, True, False, True, True]  # category 2 is not listed: the default
    assert parse_score_threshold(0.3) == ScoreThresholds(0.3) and ScoreThresholds(0.3).fingerprint() == 0.3
    nothing_else = read_thresholds(_write(tmp_path, {"per_category": {"2": 0.5}, "default": None}, "b.json"))
    assert nothing_else.keep(np.array([1, 2]), np.array([0.01, 0.4])).tolist() == [True, False] and nothing_else.floor == 0.0


@pytest.mark.parametrize("content, message", [
    ("{not json", r"not JSON"),
    ([0.5], r"expected \{\"per_category\".*found a list"),
    ({"per_category": {"1": 0.5}, "AP": 0.3}, r"found an object with keys \['AP', 'per_category'\]"),
    ({"per_category": {"person": 0.5}}, r"per_category key 'person' is not a category id"),
    ({"per_category": {"1": 1.5}}, r"per_category\['1'\] is 1.5; a score must be a number in \[0, 1\]"),
    ({"default": "high"}, r"default is 'high'"),
    ({"per_category": [0.5]}, r"per_category must map category ids to scores"),
])  # fmt: skip
def test_a_bad_file_is_named_with_the_fix(tmp_path, content, message):
    uri = _write(tmp_path, content)
    with pytest.raises(InputError, match=message) as raised:
        parse_score_threshold(uri)
    assert uri in str(raised.value)


def test_a_missing_file_and_a_bad_number_are_refused(tmp_path):
    with pytest.raises(DetbatchError, match="nope.json: no such file"):
        parse_score_threshold(str(tmp_path / "nope.json"))
    with pytest.raises(ConfigError, match=r"1.5 is not a score in \[0, 1\] \(or give a thresholds.json URI\)"):
        load_config(DetectConfig, None, {"model.score_threshold": 1.5})
    assert load_config(DetectConfig, None, {"model.score_threshold": "0.25"}).model.score_threshold == 0.25


def test_the_detector_keeps_per_category_what_the_model_scores(tmp_path):
    """With thresholds by category, each image's boxes are exactly the unfiltered model's boxes that pass
    their category's threshold, in the same order."""
    from detbatch.detect.detector import Detector

    weights = str(tmp_path / "tiny.pt")
    write_tiny_checkpoint(weights, seed=3)
    settings = dict(model="tiny_fcos", weights=weights, detections_per_image=20, device="cpu", batch_size=2)
    everything = Detector(score_threshold=0.0, **settings).score(_decoded_batch()).to_pylist()
    scores = np.concatenate([row["score"] for row in everything])
    cut = float(np.median(scores))  # a threshold that keeps some boxes and drops others
    thresholds = {"default": None, "per_category": {"1": cut, "2": 0.0, "3": 1.0}}
    filtered = Detector(score_threshold=0.0, per_category=thresholds, **settings).score(_decoded_batch()).to_pylist()
    kept_some = dropped_some = False
    for full, got in zip(everything, filtered):
        want = [i for i, (c, s) in enumerate(zip(full["category_id"], full["score"]))
                if s >= {1: cut, 2: 0.0, 3: 1.0}.get(c, 0.0)]  # the default: null, keep all
        assert got["category_id"] == [full["category_id"][i] for i in want]
        assert got["score"] == [full["score"][i] for i in want]
        assert got["box"] == [v for i in want for v in full["box"][4 * i: 4 * i + 4]]
        kept_some |= bool(want)
        dropped_some |= len(want) < len(full["score"])
    assert kept_some and dropped_some


def test_a_thresholds_file_rewritten_in_place_is_refused(tmp_path):
    """The run's state records the thresholds themselves: the same file with other numbers is another run."""
    images = write_input(str(tmp_path / "in"), num_images=2, seed=5)
    weights = str(tmp_path / "tiny.pt")
    write_tiny_checkpoint(weights, seed=1)
    uri = _write(tmp_path, {"per_category": {"1": 0.3}, "default": 0.5})
    config = load_config(DetectConfig, None, {"input.uri": images, "output.uri": str(tmp_path / "out"), "model.name": "tiny_fcos",
                                              "model.weights": weights, "model.score_threshold": uri})  # fmt: skip
    opened = open_output(config, list_input(images))
    assert opened.fingerprint["score_threshold"] == {"default": 0.5, "per_category": {"1": 0.3}}
    opened.lease.release()
    storage.write_text(uri, json.dumps({"per_category": {"1": 0.35}, "default": 0.5}))
    with pytest.raises(ConfigError, match=r"other settings \(score_threshold: .*'1': 0.3\}\} -> .*'1': 0.35\}\}\)"):
        open_output(config, list_input(images))
