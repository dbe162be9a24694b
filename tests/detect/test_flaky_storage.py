"""``detbatch detect`` through a flaky S3: every image lands in the output exactly once, as in a clean run.

The driver runs as a subprocess (``python -m detbatch detect``) with ``AWS_ENDPOINT_URL`` pointing at the fault
proxy (tests/helpers/fault_proxy.py): detbatch forwards ``AWS_*`` to the job's Ray workers when it connects
itself, so the driver, the read tasks and the detector actors all go through the proxy, which fails their
GETs, HEADs, LISTs, PUTs and DELETEs on a seeded schedule (one read task's storage fails for longer than the
task retries, so that Ray Data reruns it). The listing under faults: tests/detect/test_listing_faults.py.

The oracle is one clean run over the image files (``run_detect`` in this process, whose workers talk to moto
directly), compared image by image (by file name) with each faulty run over the same images as files, tar
shards or Parquet shards: the same ids (the manifest, or the ids the shards carry), statuses and boxes. The
model is ``ssdlite320_mobilenet_v3_large`` with seeded random weights (a checkpoint written here), so that two
runs detect the same boxes and the clean run is an oracle for the boxes of every image, not only their number.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import boto3
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from s3fs import S3FileSystem

from detbatch import storage
from detbatch.config import load_config
from detbatch.datasets.prepare import prepare_shards
from detbatch.datasets.synth import synthesize
from detbatch.detect.config import DetectConfig
from detbatch.detect.driver import run_detect
from detbatch.detect.sink import read_commit_log
from tests.helpers.fault_proxy import FaultProxy, FaultRule

FAST_MODEL = "ssdlite320_mobilenet_v3_large"
NUM_IMAGES = 24
SETTINGS = {  # what both runs compute with; the faulty run passes them as flags
    "model.name": FAST_MODEL,
    "model.score_threshold": 0.0,  # random weights score low: keep every box so detections exist
    "model.detections_per_image": 5,
    "inference.batch_size": 4,
    "inference.device": "cpu",
    "output.rows_per_file": 4,
}
# A faulty run takes ~1 min here; a driver that hangs on storage fails the test, not the suite.
RUN_TIMEOUT_S = 300
INPUT_KEYS = {"images": "*/src/images/*.png", "tar": "*/tar/*.tar", "parquet": "*/parquet/*.parquet"}
GET_KINDS = ("503", "500", "reset", "reset_mid_body", "short")
PUT_KINDS = ("503", "500", "reset", "lost_reply")
# The GETs one read_bytes makes at most before it gives up: s3fs's attempts at a body cut short (5), in each of
# detbatch's RETRY_ATTEMPTS (8). The image files' run cuts one image's GETs short more often than that.
READ_BYTES_GETS = S3FileSystem.retries * storage.RETRY_ATTEMPTS
HOPELESS_IMAGE = "*/src/images/000010.png"
HOPELESS_FAULTS = READ_BYTES_GETS + 3


def _fault_rules(kind: str) -> list[FaultRule]:
    """The schedule of a faulty run over ``kind`` input; each rule fails a key at most once per operation (but
    one), so that a call gets through within the retries of the layers below detbatch's and a run stays short.

    Image files: each GET fails with every kind, at 15% each; and one image's GETs are cut short 43 times,
    more than its read task retries (~6 s of waits of 1 s at most), so that it fails with TransientStorageError after
    it delivered the first 8 rows of its unit (units of 12 here), and Ray Data reruns it. Shards (three, one
    streamed read each): each kind fails one shard's GET once (503 and reset_mid_body the first, 500 and short
    the second, reset the third). Output (parts, state, lease, attempt records, run.json): every kind of PUT
    fault at 10% each; and GETs, HEADs, LISTs and DELETEs (the commit log, the lease, the final counts) refused,
    reset or cut at 5%.
    """
    if kind == "images":
        data = [FaultRule("short", ("GET",), HOPELESS_IMAGE, max_per_key=HOPELESS_FAULTS),
                *(FaultRule(k, ("GET",), INPUT_KEYS[kind], rate=0.15, max_per_key=1) for k in GET_KINDS)]
    else:
        data = [FaultRule(k, ("GET",), f"*/{kind}/shard-{i % 3:06d}.{kind}", max_per_key=1) for i, k in enumerate(GET_KINDS)]
    return [
        *data,
        FaultRule("503", ("HEAD",), INPUT_KEYS[kind], rate=0.2, max_per_key=1),
        *(FaultRule(k, ("PUT",), "*/faulty-*", rate=0.1, max_per_key=1) for k in PUT_KINDS),
        *(FaultRule(k, ("GET", "HEAD", "LIST", "DELETE"), "*/faulty-*", rate=0.05, max_per_key=1)
          for k in ("503", "reset", "short")),
    ]


@pytest.fixture(scope="module")
def dataset(s3_endpoint) -> dict[str, str]:
    """24 synthetic images in a bucket of their own, as files and as tar and Parquet shards of 8."""
    bucket = f"s3://flaky-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket.removeprefix("s3://"))
    synthesize(f"{bucket}/src", NUM_IMAGES, seed=11)
    inputs = {"images": f"{bucket}/src/images"}
    for fmt in ("tar", "parquet"):
        result = prepare_shards(f"{bucket}/src/images", f"{bucket}/{fmt}", fmt, annotations=f"{bucket}/src/annotations.json",
                                images_per_shard=8)
        assert result.num_shards == 3
        inputs[fmt] = f"{bucket}/{fmt}"
    inputs["manifest"] = f"{bucket}/src/annotations.json"  # the ids the shards carry, for the image files
    return inputs


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    """A detbatch checkpoint of FAST_MODEL with seeded random weights (``--weights none`` draws new ones in
    every actor, so two runs would detect different boxes)."""
    import torch

    from detbatch.models.checkpoint import checkpoint_dict
    from detbatch.models.detectors import default_categories
    from detbatch.models.zoo import build_model

    categories = default_categories(FAST_MODEL)
    torch.manual_seed(0)
    model = build_model(FAST_MODEL, categories.num_classes, None, None, 0.0, 5)
    path = tmp_path_factory.mktemp("weights") / "seeded.pt"
    torch.save(checkpoint_dict(model, FAST_MODEL, categories), path)
    return str(path)


def _faulty_run(input_uri: str, output: str, weights: str, proxy: FaultProxy, ray_address: str,
                *extra: str) -> subprocess.CompletedProcess:
    """``detbatch detect`` in a subprocess whose storage (and its Ray workers') is the proxy."""
    args = [sys.executable, "-m", "detbatch", "detect", "--input", input_uri, "--output", output,
            "--weights", weights, "--ray-address", ray_address,
            *(a for key, value in SETTINGS.items() for a in ("--set", f"{key}={value}")), *extra]
    # Waits of at most 1 s between storage attempts (8 s by default): the hopeless image's read task gives
    # up after ~6 s instead of ~24 s; detbatch forwards the setting to the job's workers.
    env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url, storage.MAX_BACKOFF_ENV: "1"}
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def _committed(output: str) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The images and detections tables of ``output`` part by part, as the commit log names them, checked on
    the way: each images part has its detections part, with as many rows as its ``num_detections`` say, and
    the tables' folders hold nothing else. Returns both tables and run.json."""
    fs, _ = storage.resolve(output)
    log = read_commit_log(output)
    assert log.debris == [], f"{output}: files that do not count were left: {log.debris}"
    images, detections = [], []
    for part in log.parts:
        uris = {table: storage.resolve(storage.join(output, table, part.name))[1] for table in ("images", "detections")}
        im = pq.read_table(uris["images"], filesystem=fs).to_pandas()
        dt = pq.read_table(uris["detections"], filesystem=fs).to_pandas()
        assert len(im) == part.stop - part.start, part.name
        per_uri = dt.groupby("uri").size().reindex(im.uri, fill_value=0)
        assert per_uri.tolist() == im.num_detections.tolist(), f"{part.name}: detections disagree with num_detections"
        images.append(im)
        detections.append(dt)
    for table in ("images", "detections"):
        assert sorted(storage.list_names(storage.join(output, table), hidden=True)) == sorted(p.name for p in log.parts)
    run = json.loads(storage.read_text(storage.join(output, "run.json")))
    return pd.concat(images, ignore_index=True), pd.concat(detections, ignore_index=True), run


def _by_file_name(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with its ``uri`` replaced by the image's file name (``.../000001.png``, ``...tar#000001.png``),
    which is the same image in every form of the input, sorted."""
    table = table.assign(uri=table.uri.str.rsplit("#", n=1).str[-1].str.rsplit("/", n=1).str[-1])
    keys = ["uri"] if "score" not in table else ["uri", "category_id", "score", "x_min", "y_min", "x_max", "y_max"]
    return table.sort_values(keys, ignore_index=True)


@pytest.fixture(scope="module")
def clean(dataset, weights, ray_cluster) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The clean run's tables (by file name) and run.json: the image files, straight to moto."""
    out = f"{dataset['images'].rsplit('/', 2)[0]}/clean"
    run_detect(load_config(DetectConfig, None, {"input.uri": dataset["images"], "input.manifest": dataset["manifest"],
                                                "output.uri": out, "model.weights": weights, **SETTINGS}))
    images, detections, run = _committed(out)
    return _by_file_name(images), _by_file_name(detections), run


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["images", "tar", "parquet"])
@pytest.mark.usefixtures("ray_cluster")
def test_detect_through_flaky_storage_is_exactly_once(kind, dataset, weights, clean, s3_endpoint, ray_cluster,
                                                      record_property):
    """Faults of every kind on every kind of request (and, for image files, one read task that gives up and is
    rerun): exit 0, and the output is the clean run's, image for image and box for box, each image once, each
    part whole, run.json's counts the tables'."""
    input_uri = dataset[kind]
    faulty_out = f"s3://{input_uri.split('/')[2]}/faulty-{kind}"
    extra = ["--manifest", dataset["manifest"], "--set", "input.images_per_unit=12"] if kind == "images" else []
    with FaultProxy(s3_endpoint, _fault_rules(kind), seed=12) as proxy:
        started = time.perf_counter()
        proc = _faulty_run(input_uri, faulty_out, weights, proxy, ray_cluster.address, *extra)
        wall = time.perf_counter() - started
    # For docs/reliability.md (``--junitxml`` writes them out).
    record_property("faulty_run_s", round(wall, 1))
    record_property("faults", proxy.counts())
    record_property("faults_on_input", proxy.counts(INPUT_KEYS[kind]))
    record_property("requests", dict(proxy.requests))
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-6000:]}"

    # The faults happened: every kind on the input's GETs, every PUT kind on the output, commits among them.
    for fault in GET_KINDS:
        assert proxy.count(fault, "GET", INPUT_KEYS[kind]) > 0, (fault, proxy.counts())
    for fault in PUT_KINDS:
        assert proxy.count(fault, "PUT", "*/faulty-*") > 0, (fault, proxy.counts())
    for table in ("images", "detections"):  # the commits themselves, written by the detector actor
        assert proxy.count(None, "PUT", f"*/faulty-*/{table}/*") > 0, (table, proxy.counts())
    if kind == "images":
        # One read task spent all its retries on the image (the last one logged), and since the run finished,
        # Ray Data ran it again: more cut GETs than one read_bytes makes.
        assert f"(attempt {storage.RETRY_ATTEMPTS} of {storage.RETRY_ATTEMPTS})" in proc.stderr
        assert proxy.count("short", "GET", HOPELESS_IMAGE) >= HOPELESS_FAULTS > READ_BYTES_GETS

    clean_images, clean_detections, clean_run = clean
    images, detections, run = _committed(faulty_out)
    # Every image exactly once, with the clean run's id, status and detections; no error it lacks.
    assert not images.uri.duplicated().any() and len(images) == NUM_IMAGES
    assert (images.status == "ok").all() and (clean_images.status == "ok").all()
    columns = ["uri", "image_id", "width", "height", "status", "error", "num_detections"]
    pd.testing.assert_frame_equal(_by_file_name(images)[columns], clean_images[columns])
    got, want = _by_file_name(detections), clean_detections
    assert got[["uri", "image_id", "category_id", "category"]].equals(want[["uri", "image_id", "category_id", "category"]])
    for column in ("score", "x_min", "y_min", "x_max", "y_max"):
        np.testing.assert_allclose(got[column], want[column], rtol=1e-4, atol=1e-3, err_msg=column)
    # run.json counts are the tables'.
    counts = {"images_ok": int((images.status == "ok").sum()), "images_error": int((images.status != "ok").sum()),
              "detections": len(detections)}
    assert run["counts"] == counts == clean_run["counts"]
