"""``inference.decode: gpu`` and ``overlap_commit`` end to end, on CPU: JPEGs travel to the detector actors
undecoded and are decoded there (torchvision's CPU decode_jpeg stands in for nvJPEG), two calls run in each
actor at once, and a writer killed between a call's inference and its commit resumes to the rows of the
plain CPU-decode run, row for row.

The reference is the detector's CPU-decode calls in this process, the crash a :mod:`tests.helpers.writer`
process (no Ray: the failpoint lands where it is armed); the resume is ``run_detect`` on the shared Ray
cluster, whose actors must run this code (a Ray worker with another detbatch would refuse the ``overlap``
setting and fail the run).
"""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from PIL import Image

from detbatch import storage
from detbatch.detect.driver import run_detect
from detbatch.detect.sink import CommitLog
from detbatch.detect.output import RUN_FILE
from detbatch.detect.sink import read_commit_log
from detbatch.faults import FAILPOINT_EXIT_CODE
from tests.helpers.exactly_once import (
    Store,
    check_invariants,
    config_values,
    detect_config,
    read_tables,
    run_writer,
    write_tiny_checkpoint,
)
from tests.helpers.images import jpeg_bytes, png_bytes
from tests.helpers.writer import calls, detector

pytestmark = pytest.mark.usefixtures("ray_cluster")

SHAPES = 8  # synthetic shapes, saved as JPEG


def _jpeg(png: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _extras() -> dict[str, bytes]:
    """The files off the GPU path, and the bad ones: (name -> bytes)."""
    plain = jpeg_bytes(size=(64, 48), seed=3)
    return {
        "grey.jpg": jpeg_bytes(size=(48, 64), mode="L", seed=1),  # undecoded, as RGB
        "cmyk.jpg": jpeg_bytes(size=(40, 40), mode="CMYK", seed=2),  # decoded on CPU in the decode task
        "shape.png": png_bytes((0, 128, 255), size=(50, 30)),
        "truncated.jpg": plain[: len(plain) // 2],  # the decode task's error row
        "no-scan.jpg": plain[: plain.index(b"\xff\xda")] + b"\xff\xd9",  # the actor's decode fails: CPU's error row
        "text.jpg": b"not a JPEG at all",
    }


@pytest.fixture(scope="module")
def jpeg_store(tmp_path_factory) -> Store:
    from detbatch.datasets.synth import synthesize

    root = tmp_path_factory.mktemp("jpeg-in-actor")
    synthesize(str(root / "synth"), SHAPES, seed=5)
    images = root / "input"
    images.mkdir()
    for i, png in enumerate(sorted((root / "synth" / "images").glob("*.png"))):
        (images / f"{i:06d}.jpg").write_bytes(_jpeg(png.read_bytes()))
    for name, data in _extras().items():
        (images / name).write_bytes(data)
    weights = str(root / "tiny.pt")
    write_tiny_checkpoint(weights, seed=0)
    return Store("local", str(root), str(images), weights)


def test_a_writer_killed_between_inference_and_commit_resumes_to_the_cpu_decode_rows(jpeg_store):
    inputs = SHAPES + len(_extras())
    from detbatch.detect.units import list_input

    reference = jpeg_store.output("cpu-decode")
    config = detect_config(jpeg_store, reference, **{"inference.decode": "cpu"})
    plain = detector(config, generation=1)
    for _, batch in calls(list_input(jpeg_store.input), config.output.rows_per_file, CommitLog()):
        plain(batch)
    expected_images, expected_detections = read_tables(reference)
    assert len(expected_images) == inputs and (expected_images.status == "error").sum() == 3
    errors = dict(zip(expected_images.uri.str.rsplit("/", n=1).str[-1], expected_images.error))
    assert errors["no-scan.jpg"].startswith("corrupt image") and errors["text.jpg"].startswith("not an image")

    out = jpeg_store.output("gpu-decode")
    on_device = {"inference.decode": "gpu", "inference.overlap_commit": True}
    died = run_writer(config_values(jpeg_store, out, **on_device),
                      failpoints="detector.between_inference_and_commit=exit@3")
    assert died.returncode == FAILPOINT_EXIT_CODE, died.stderr[-3000:]
    committed = read_commit_log(out).committed_images
    assert committed < inputs  # the crash left work: at most the two calls before it committed

    summary = run_detect(detect_config(jpeg_store, out, **on_device))
    assert summary.images_resumed == committed and summary.images_processed == inputs - committed
    images, detections = read_tables(out)
    pd.testing.assert_frame_equal(images, expected_images)
    pd.testing.assert_frame_equal(detections, expected_detections, check_exact=False, rtol=1e-5)
    assert len(detections) > 0
    check_invariants(out, num_inputs=inputs)
    run = json.loads(storage.read_text(storage.join(out, RUN_FILE)))
    assert run["pool"] == {"max_actors": 1, "threads_per_actor": 1, "decode": "gpu", "overlap_commit": True}
