"""``detbatch filter``: a detect output cut to a thresholds.json gives the rows of a detect run with it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detbatch import storage
from detbatch.cli import main
from detbatch.config import ConfigError
from detbatch.evaluate.postfilter import FILTER_FILE, filter_run

from tests.helpers.exactly_once import (
    Reference, assert_same_as_clean, check_invariants, clean_reference, detect_config, read_tables, shared_store, snapshot,
)  # fmt: skip


@pytest.mark.slow
def test_filtering_a_detect_output_equals_a_detect_run_with_the_thresholds(ray_cluster, tmp_path_factory, s3_endpoint, tmp_path):
    from detbatch.detect.driver import run_detect

    store = shared_store("local", tmp_path_factory, s3_endpoint)
    reference = clean_reference(store)  # every box the model scores (threshold 0), shared with tests/detect
    scores = reference.detections
    # Thresholds that keep some boxes of every category and drop others; the lowest above 0, so that the
    # detect run's model itself cuts at it (the floor) before the per-category filter.
    per = {str(c): float(np.quantile(scores.score[scores.category_id == c], q)) for c, q in ((1, 0.5), (2, 0.3))}
    thresholds = {"per_category": per, "default": float(np.quantile(scores.score, 0.6))}
    uri = str(tmp_path / "thresholds.json")
    storage.write_text(uri, json.dumps(thresholds))

    detected = store.output("with-thresholds")
    run_detect(detect_config(store, detected, **{"model.score_threshold": uri}))
    filtered = str(tmp_path / "filtered")
    assert main(["filter", "--detections", reference.output, "--score-threshold", uri, "--out", filtered]) == 0

    check_invariants(filtered, foreign={FILTER_FILE: snapshot(filtered)[FILTER_FILE]})  # detect's output contract
    want = Reference(detected, *read_tables(detected))
    assert 0 < len(want.detections) < len(reference.detections)
    assert_same_as_clean(filtered, want)  # the images table (num_detections) and every detection
    run = json.loads(storage.read_text(storage.join(filtered, "run.json")))
    assert run["fingerprint"]["score_threshold"] == json.loads(storage.read_text(storage.join(detected, "run.json")))["fingerprint"]["score_threshold"]

    again = filter_run(reference.output, uri, filtered)  # a rerun finds every part committed
    assert again.parts_resumed == again.parts and again.detections_kept == len(want.detections)
    with pytest.raises(ConfigError, match="holds another filtering"):
        filter_run(reference.output, 0.5, filtered)
    with pytest.raises(ConfigError, match="overlaps --detections"):
        filter_run(reference.output, 0.5, storage.join(reference.output, "sub"))
