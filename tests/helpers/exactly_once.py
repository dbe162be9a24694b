"""What detect's fault-injection tests share: one input and its clean run per storage, the comparison of an
output with that run, the invariants of the commit protocol, snapshots of folders, and the ways to start
a writer (the real CLI, or :mod:`tests.helpers.writer`) in a process of its own.

The model is ``tiny_fcos`` from a seeded checkpoint, not random torchvision weights: every process then
runs the same weights, so a resumed output can be compared with the clean run box for box, not only in
counts (to float tolerances: :func:`assert_same_as_clean`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from detbatch import storage
from detbatch.config import load_config
from detbatch.detect import sink
from detbatch.detect.config import DetectConfig
from detbatch.detect.lease import LEASE_DIR
from detbatch.detect.output import LISTING_DIR, PLAN_FILE, RUN_FILE, STATE_FILE

REPO = Path(__file__).resolve().parents[2]
STORAGES = ("local", "s3")
# 14 images and one corrupt file (an error row), two per unit and per file pair: 8 units, the last of one
# image. Small enough that a run takes seconds on two cores, enough parts for a crash to land between them.
NUM_IMAGES = 14
ROWS_PER_FILE = 2
NUM_INPUTS = NUM_IMAGES + 1
CORRUPT_NAME = "000007-corrupt.png"
CATEGORIES = [{"id": 1, "name": "square"}, {"id": 2, "name": "circle"}, {"id": 3, "name": "triangle"}]
# How the results are compared: the images table on these columns, the detections table on all of them.
IMAGE_COLUMNS = ["uri", "image_id", "status", "num_detections", "width", "height", "error"]
DETECTION_ORDER = ["uri", "score", "category_id", "x_min", "y_min", "x_max", "y_max"]


def write_tiny_checkpoint(uri: str, seed: int) -> None:
    """A ``tiny_fcos`` checkpoint of seeded random weights (64 px input: fast on CPU) at ``uri`` (a .pt)."""
    import torch

    from detbatch import models

    cats = models.Categories.from_coco(CATEGORIES)
    torch.manual_seed(seed)
    model = models.build_model("tiny_fcos", cats.num_classes, min_size=64, max_size=64)
    buf = io.BytesIO()
    torch.save(models.checkpoint_dict(model, "tiny_fcos", cats, {"min_size": 64, "max_size": 64}), buf)
    storage.write_bytes(uri, buf.getvalue())


def write_input(root: str, num_images: int = NUM_IMAGES, seed: int = 11) -> str:
    """Synthetic images (and one corrupt file) under ``root/images``; returns that folder's URI."""
    from detbatch.datasets.synth import synthesize

    synthesize(root, num_images, seed=seed)
    images = storage.join(root, "images")
    storage.write_bytes(storage.join(images, CORRUPT_NAME), b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    return images


def new_bucket(endpoint: str) -> str:
    import boto3

    name = f"test-eo-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


@dataclass
class Store:
    """One storage's shared input and weights, and a place for each test's outputs."""

    kind: str
    root: str
    input: str
    weights: str

    def output(self, name: str) -> str:
        """A fresh output URI under this storage's root."""
        return storage.join(self.root, "outputs", f"{name}-{uuid.uuid4().hex[:6]}")


@dataclass
class Reference:
    """A clean run's tables, in :func:`read_tables`'s order."""

    output: str
    """The clean run's output: read it, never write to it."""
    images: pd.DataFrame
    detections: pd.DataFrame


_STORES: dict[str, Store] = {}
_REFERENCES: dict[str, Reference] = {}


def shared_store(kind: str, tmp_path_factory: Any, s3_endpoint: str) -> Store:
    """The session's input and weights on ``kind`` storage (written once, never changed by a test)."""
    if kind not in _STORES:
        root = str(tmp_path_factory.mktemp("exactly-once")) if kind == "local" else f"{new_bucket(s3_endpoint)}/eo"
        weights = storage.join(root, "weights", "tiny.pt")
        write_tiny_checkpoint(weights, seed=0)
        _STORES[kind] = Store(kind, root, write_input(storage.join(root, "input")), weights)
    return _STORES[kind]


def clean_reference(store: Store) -> Reference:
    """The clean run of ``store``'s input (run once per session, on the shared Ray cluster)."""
    from detbatch.detect.driver import run_detect

    if store.kind not in _REFERENCES:
        output = store.output("clean")
        summary = run_detect(detect_config(store, output))
        assert (summary.images_ok, summary.images_error) == (NUM_IMAGES, 1) and not summary.images_resumed
        check_invariants(output)
        images, detections = read_tables(output)
        _REFERENCES[store.kind] = Reference(output, images, detections)
    return _REFERENCES[store.kind]


def config_values(store: Store, output: str, **overrides: Any) -> dict[str, Any]:
    return {
        "input.uri": store.input,
        "output.uri": output,
        "model.name": "tiny_fcos",
        "model.weights": store.weights,
        "model.score_threshold": 0.0,  # random weights score low: keep every box so that detections exist
        "model.detections_per_image": 5,
        "inference.batch_size": 4,
        "inference.device": "cpu",
        "output.rows_per_file": ROWS_PER_FILE,
        **overrides,
    }


def detect_config(store: Store, output: str, **overrides: Any) -> DetectConfig:
    return load_config(DetectConfig, None, config_values(store, output, **overrides))


def detect_argv(store: Store, output: str, *extra: str, ray_address: str | None = None,
                rows_per_file: int = ROWS_PER_FILE) -> list[str]:
    """``detbatch detect`` arguments with :func:`config_values`' settings (for ``detbatch.cli.main``)."""
    sets = ["model.detections_per_image=5", f"output.rows_per_file={rows_per_file}"]
    joins = ["--ray-address", ray_address] if ray_address else []
    return ["detect", "--input", store.input, "--output", output, "--model", "tiny_fcos", "--weights", store.weights,
            "--score-threshold", "0", "--batch-size", "4", "--device", "cpu", *joins,
            *(a for s in sets for a in ("--set", s)), *extra]


def cli_args(store: Store, output: str, ray_address: str, *extra: str, rows_per_file: int = ROWS_PER_FILE) -> list[str]:
    """``python -m detbatch detect`` with :func:`config_values`' settings, joining the test cluster."""
    return [sys.executable, "-m", "detbatch",
            *detect_argv(store, output, *extra, ray_address=ray_address, rows_per_file=rows_per_file)]


def start_writer(values: dict[str, Any], *args: str, failpoints: str | None = None) -> subprocess.Popen:
    """:mod:`tests.helpers.writer` in a process of its own (stdout: one line per committed part)."""
    env = {k: v for k, v in os.environ.items() if k != "DETBATCH_FAILPOINTS"}
    if failpoints:
        env["DETBATCH_FAILPOINTS"] = failpoints
    return subprocess.Popen([sys.executable, "-m", "tests.helpers.writer", json.dumps(values), *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_writer(values: dict[str, Any], *args: str, failpoints: str | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
    proc = start_writer(values, *args, failpoints=failpoints)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# ------------------------------------------------------------------------------------------ reading outputs


def _read_files(output: str, files: list[str], schema: Any) -> pd.DataFrame:
    fs, _ = storage.resolve(output)
    paths = [storage.resolve(uri)[1] for uri in files]
    return pads.dataset(paths, filesystem=fs, format="parquet", schema=schema).to_table().to_pandas()


def read_tables(output: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(images, detections) as detect's readers see them: the files of the commit log, in a fixed order."""
    log = sink.read_commit_log(output)
    images = _read_files(output, log.files(output, "images"), sink.IMAGES_SCHEMA)
    detections = _read_files(output, log.files(output, "detections"), sink.DETECTIONS_SCHEMA)
    images = images[IMAGE_COLUMNS].sort_values("uri").reset_index(drop=True)
    detections = detections.sort_values(DETECTION_ORDER).reset_index(drop=True)
    return images, detections


# How far a resumed run's floats may lie from the clean run's: the same weights on the same images, but in
# other batches (a resumed call holds what was left), and oneDNN's kernels for a batch of 1 and of 4 sum in
# other orders on some CPUs (seen on an AMD EPYC: 3e-6 px on a box, ~1e-7 relative). Anything a bug would
# change (a row lost, doubled, or scored on the wrong image) is far outside these.
SCORE_TOLERANCE = dict(rtol=1e-5, atol=1e-6)
BOX_TOLERANCE_PX = dict(rtol=1e-5, atol=1e-3)


def assert_same_as_clean(output: str, reference: Reference) -> None:
    """Row for row: the images table exactly, and every image's detections: ids and categories exactly,
    scores and boxes to :data:`SCORE_TOLERANCE` and :data:`BOX_TOLERANCE_PX`."""
    images, detections = read_tables(output)
    pd.testing.assert_frame_equal(images, reference.images)
    want = reference.detections
    exact = ["uri", "image_id", "category_id", "category"]
    pd.testing.assert_frame_equal(detections[exact], want[exact])
    np.testing.assert_allclose(detections["score"], want["score"], err_msg="score", **SCORE_TOLERANCE)
    for column in ("x_min", "y_min", "x_max", "y_max"):
        np.testing.assert_allclose(detections[column], want[column], err_msg=column, **BOX_TOLERANCE_PX)


def check_invariants(output: str, foreign: dict[str, str] | None = None, debris_ok: bool = False,
                     num_inputs: int = NUM_INPUTS, state_temporaries_ok: bool = False) -> sink.CommitLog:
    """What every finished output satisfies, read back from storage:

    - every input image once (no uri twice, none missing: the log's parts cover every unit whole);
    - every committed images part has its detections part, whose rows per image match num_detections;
    - run.json's counts equal the tables;
    - the output holds only detbatch's files (and, unchanged, the user's ``foreign`` ones: path -> digest);
      no debris unless ``debris_ok`` (a fenced writer's file that landed after the last run's clean-up),
      and no hidden temporary under ``_detbatch/`` unless ``state_temporaries_ok`` (a process that died
      writing its lease or state.json leaves one, which no reader lists and no run removes).
    """
    log = sink.read_commit_log(output)
    all_images = []
    for part in log.parts:
        images = _read_files(output, [storage.join(output, "images", part.name)], sink.IMAGES_SCHEMA)
        detections = _read_files(output, [storage.join(output, "detections", part.name)], sink.DETECTIONS_SCHEMA)
        assert len(images) == part.stop - part.start, part.name
        per_image = detections.groupby("uri").size()
        assert set(per_image.index) <= set(images.uri), part.name
        assert (per_image.reindex(images.uri, fill_value=0).to_numpy() == images.num_detections.to_numpy()).all(), \
            part.name
        all_images.append(images)
    images = pd.concat(all_images)
    assert not images.uri.duplicated().any(), "an image was committed twice"
    assert len(images) == num_inputs, f"{output}: {len(images)} images committed, {num_inputs} inputs"
    assert debris_ok or not log.debris, f"{output}: debris left: {log.debris}"
    run = json.loads(storage.read_text(storage.join(output, RUN_FILE)))
    ok = int((images.status == "ok").sum())
    assert run["counts"] == {"images_ok": ok, "images_error": len(images) - ok,
                             "detections": int(images.num_detections.sum())}
    tree = snapshot(output)
    for name in tree:
        if foreign and name in foreign:
            continue
        folder, _, base = name.rpartition("/")
        if state_temporaries_ok and folder in (sink.DETBATCH_DIR, LEASE_DIR) and sink.is_temporary(base):
            continue
        if folder == sink.ATTEMPTS_DIR:  # a record of an older run's call (a fenced one's), removed by the next run
            assert re.fullmatch(r"g\d{6}-.*\.json", base) and int(base[1:7]) < run["lease_generation"], name
            continue
        assert name in (RUN_FILE, STATE_FILE, PLAN_FILE) or folder == LEASE_DIR and base.endswith(".json") \
            or folder == LISTING_DIR and re.fullmatch(r"part-[0-9a-f]{16}\.parquet", base) \
            or folder in sink.TABLES and sink.parse_part(base) is not None, f"{output}: unexpected file {name}"
    for name, digest in (foreign or {}).items():
        assert tree.get(name) == digest, f"{output}: the user's file {name} was changed or deleted"
    return log


# ------------------------------------------------------------------------------------------ folders


def snapshot(uri: str) -> dict[str, str]:
    """Every file under ``uri`` (hidden ones too): relative path -> SHA-256 of its bytes."""
    fs, path = storage.resolve(uri)
    fs.invalidate_cache()
    if not fs.exists(path):
        return {}
    found = fs.find(path, withdirs=False)
    return {p[len(path):].lstrip("/"): hashlib.sha256(fs.cat_file(p)).hexdigest() for p in found}


def copy_tree(source: str, dest: str, keep: Any = lambda name: True) -> None:
    """Copy the files under ``source`` whose relative names ``keep`` accepts to ``dest``."""
    fs, path = storage.resolve(source)
    fs.invalidate_cache()
    for p in fs.find(path, withdirs=False):
        name = p[len(path):].lstrip("/")
        if keep(name):
            storage.write_bytes(storage.join(dest, name), fs.cat_file(p))


def committed_parts(output: str) -> int:
    """How many parts of ``output`` are committed now (both files present)."""
    return len(sink.read_commit_log(output).parts)


def wait_for(predicate: Any, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc is None or proc.poll() is None, f"the process ended (rc {proc.returncode}) before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def wait_for_idle_cluster(timeout: float = 120) -> None:
    """Wait until every CPU of the test cluster is free again: a killed driver's actors (one CPU each) and
    tasks are reaped by Ray asynchronously. (Ray's state API would need the dashboard, which a second Ray on
    the same machine can keep from starting; this needs only the GCS.)"""
    import ray

    deadline = time.time() + timeout
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0):
        assert time.time() < deadline, f"the cluster's CPUs are still held: {ray.available_resources()}"
        time.sleep(0.5)
