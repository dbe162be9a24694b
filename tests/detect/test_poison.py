"""A batch that kills its actor every time (a model crash on one image) no longer fails the job: the call
is halved until the image is alone, that image becomes an error row, and the rest of the run is the same
as a clean run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from detbatch.detect.detector import CRASHED, _after_crash
from detbatch.detect.driver import isolation_retries


def test_isolation_halves_the_running_rows_then_tries_an_image_twice():
    state = {"queue": [[0, 8]], "suspect": [], "crashed": []}
    state = _after_crash(state)
    assert state["queue"] == [[0, 4], [4, 8]]
    state = _after_crash({**state, "queue": [[4, 8]]})  # [0, 4) ran; the crash was in [4, 8)
    assert state["queue"] == [[4, 6], [6, 8]]
    state = _after_crash(_after_crash({**state, "queue": [[6, 8]]}))
    assert state["queue"][0] == [6, 7] or state["queue"][0] == [7, 8]
    single = {"queue": [[7, 8], [8, 9]], "suspect": [], "crashed": []}
    once = _after_crash(single)
    assert once["queue"] == [[7, 8], [8, 9]] and once["suspect"] == [7]  # tried once more on its own
    twice = _after_crash(once)
    assert twice["queue"] == [[8, 9]] and twice["crashed"] == [7]
    # the retries Ray must allow for it: 3 halvings of 8 rows, then the image twice
    assert isolation_retries(8) == 5 and isolation_retries(1) == 2


@pytest.mark.slow
def test_an_image_that_crashes_the_model_becomes_an_error_row(ray_cluster, tmp_path):
    from detbatch.datasets.synth import synthesize

    synthesize(str(tmp_path / "shapes"), 12, seed=4)
    images = tmp_path / "shapes" / "images"
    poison = sorted(p.name for p in images.iterdir())[5]

    def detect(out, failpoints=""):
        env = {**os.environ, "DETBATCH_FAILPOINTS": failpoints}
        return subprocess.run([
            sys.executable, "-m", "detbatch", "detect", "--input", str(images), "--output", str(tmp_path / out),
            "--model", "ssdlite320_mobilenet_v3_large", "--weights", "none", "--score-threshold", "0", "--device", "cpu",
            "--ray-address", ray_cluster.address, "--set", "model.detections_per_image=5",
            "--set", "output.rows_per_file=2", "--set", "inference.batch_size=2",
        ], env=env, capture_output=True, text=True, timeout=600)  # fmt: skip

    clean = detect("clean")
    assert clean.returncode == 0, clean.stderr[-3000:]
    # every actor process dies (os._exit, as a segfault would) whenever it runs the poison image
    crashed = detect("crashed", f"detector.image:{poison}=exit")
    assert crashed.returncode == 0, crashed.stderr[-3000:]

    read = lambda out, table: pd.read_parquet(tmp_path / out / table)  # noqa: E731
    a, b = read("clean", "images").set_index("uri").sort_index(), read("crashed", "images").set_index("uri").sort_index()
    assert list(a.index) == list(b.index)  # every image once
    bad = b[b.index.str.endswith(poison)]
    assert bad.status.tolist() == ["error"] and bad.error.tolist() == [CRASHED] and bad.num_detections.tolist() == [0]
    rest = b.index.difference(bad.index)
    assert a.loc[rest].equals(b.loc[rest])  # the other images: exactly the clean run's rows
    da, db = read("clean", "detections"), read("crashed", "detections")
    key = ["uri", "category_id", "score", "x_min", "y_min", "x_max", "y_max"]
    assert da[~da.uri.str.endswith(poison)].sort_values(key).reset_index(drop=True).equals(
        db.sort_values(key).reset_index(drop=True))
    run = json.loads((tmp_path / "crashed" / "run.json").read_text())
    assert run["counts"]["images_error"] == 1 and not list((tmp_path / "crashed" / "_detbatch" / "attempts").glob("*"))
