"""The detector pool's actor (detbatch/detect/detector.py), without Ray: settings, scoring, the commit.

A real torchvision SSDlite with random weights (``weights="none"``: nothing to download) and
``score_threshold=0`` keeps every box it proposes, so each image has detections to check.
"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from detbatch.detect.decode import decode_batch
from detbatch.detect.decode import ENCODED
from detbatch.detect.detector import SCORED_SCHEMA, Detector, _after_crash, select_device
from detbatch.detect.sink import DETECTIONS_SCHEMA, IMAGES_SCHEMA, SUMMARY_SCHEMA, part_name
from tests.helpers.images import jpeg_bytes, png_bytes

# The detector silences this for its own process (pixels arrive in read-only Arrow buffers), but pytest
# resets warning filters around each test.
pytestmark = pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")

MODEL = "ssdlite320_mobilenet_v3_large"
SETTINGS = dict(model=MODEL, weights="none", score_threshold=0.0, detections_per_image=5, device="cpu",
                fp16=True, threads=1, batch_size=2)

# Read rows, out of (unit, index) order: three images of different sizes, an undecodable file, a failed read.
READ_ROWS = [
    # (unit, index, last, uri, image_id, data, read error)
    (1, 0, True, "in/d.png", 13, png_bytes((0, 0, 255), size=(32, 32)), None),
    (0, 0, False, "in/a.png", 10, png_bytes((255, 0, 0), size=(64, 48)), None),
    (0, 1, False, "in/b.png", 11, b"not an image at all", None),
    (0, 2, False, "in/c.png", 12, png_bytes((0, 255, 0), size=(40, 56)), None),
    (0, 3, False, "in/e.png", 14, None, "PermissionError: denied"),
]


def _decoded_batch(rows=READ_ROWS, keep_jpeg: bool = False) -> dict[str, np.ndarray]:
    """The rows as decode_batch writes them, in the numpy batch format Ray Data hands the actor."""
    keys = ("unit", "index", "last", "uri", "image_id", "data", "error")
    read = {k: np.array([row[i] for row in rows], dtype=object) for i, k in enumerate(keys)}
    decoded = decode_batch(read, keep_jpeg=keep_jpeg)
    return {name: decoded[name].to_numpy(zero_copy_only=False) for name in decoded.column_names}


@pytest.fixture(scope="module")
def detector_class():
    return Detector.configured(**SETTINGS)


@pytest.fixture(scope="module")
def detector(detector_class):
    torch.manual_seed(0)
    return detector_class()


@pytest.fixture(scope="module")
def coco_names():
    from torchvision.models.detection import SSDLite320_MobileNet_V3_Large_Weights

    return SSDLite320_MobileNet_V3_Large_Weights.DEFAULT.meta["categories"]  # index = label = COCO id


# --- settings ---------------------------------------------------------------------------------------


def test_configured_bakes_settings_into_a_subclass(detector_class):
    other = Detector.configured(model=MODEL, weights="none", score_threshold=0.5, detections_per_image=1)
    assert issubclass(detector_class, Detector) and detector_class is not Detector
    assert detector_class.settings == SETTINGS
    assert other.settings["score_threshold"] == 0.5 and detector_class.settings["score_threshold"] == 0.0
    assert Detector.settings == {}


def test_no_argument_constructor_uses_the_settings(detector):
    from torchvision.models.detection.ssd import SSD

    assert isinstance(detector.model, SSD) and not detector.model.training
    assert detector.model.score_thresh == 0.0
    assert detector.model.detections_per_img == 5
    assert (detector.device, detector.batch_size, detector.output) == ("cpu", 2, None)
    assert detector.fp16 is False  # fp16 is for GPUs only
    assert torch.get_num_threads() == 1


def test_constructor_arguments_override_the_settings(detector_class, tmp_path):
    det = detector_class(batch_size=1, output=str(tmp_path))
    assert (det.batch_size, det.output) == (1, str(tmp_path))
    assert det.model.detections_per_img == 5  # the rest: the settings
    assert detector_class.settings == SETTINGS


def test_base_class_needs_its_arguments():
    with pytest.raises(TypeError):
        Detector()


# --- score --------------------------------------------------------------------------------------------


def test_score_keeps_input_order_and_passthrough(detector):
    scored = detector.score(_decoded_batch())
    assert scored.schema == SCORED_SCHEMA
    rows = scored.to_pydict()
    assert rows["uri"] == ["in/d.png", "in/a.png", "in/b.png", "in/c.png", "in/e.png"]
    assert (rows["unit"], rows["index"], rows["image_id"]) == ([1, 0, 0, 0, 0], [0, 0, 1, 2, 3], [13, 10, 11, 12, 14])
    assert rows["last"] == [True, False, False, False, False]
    assert (rows["width"], rows["height"]) == ([32, 64, 0, 40, 0], [32, 48, 0, 56, 0])
    assert rows["status"] == ["ok", "ok", "error", "ok", "error"]


def test_score_matches_the_model_image_by_image(detector, coco_names):
    batch = _decoded_batch()
    rows = detector.score(batch).to_pylist()
    ok = [i for i, row in enumerate(rows) if row["status"] == "ok"]
    images = [np.frombuffer(batch["pixels"][i], np.uint8).reshape(batch["height"][i], batch["width"][i], 3) for i in ok]
    # The model sees the ok images in mini-batches of batch_size, as score() runs them.
    expected = detector.predict(images[:2]) + detector.predict(images[2:])
    for i, out in zip(ok, expected):
        row = rows[i]
        assert len(row["score"]) == 5, row["uri"]  # score_threshold 0: every image gets detections_per_image
        np.testing.assert_array_equal(np.array(row["box"], np.float32).reshape(-1, 4), out["boxes"])
        np.testing.assert_array_equal(np.array(row["score"], np.float32), out["scores"])
        assert row["category_id"] == out["labels"].tolist()
        assert row["category"] == [coco_names[label] for label in out["labels"]]


def test_boxes_lie_inside_their_image(detector):
    for row in detector.score(_decoded_batch()).to_pylist():
        boxes = np.array(row["box"], np.float32).reshape(-1, 4)
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all(), row["uri"]
        assert (boxes[:, 2] <= row["width"]).all() and (boxes[:, 3] <= row["height"]).all(), row["uri"]
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all(), row["uri"]


def test_error_rows_have_no_detections_and_keep_their_error(detector):
    rows = {row["uri"]: row for row in detector.score(_decoded_batch()).to_pylist()}
    assert rows["in/b.png"]["error"].startswith("not an image")
    assert rows["in/e.png"]["error"] == "PermissionError: denied"
    for uri in ("in/b.png", "in/e.png"):
        row = rows[uri]
        assert row["status"] == "error"
        assert row["category_id"] == row["category"] == row["score"] == row["box"] == []
    assert all(rows[uri]["error"] is None for uri in ("in/a.png", "in/c.png", "in/d.png"))


def test_batch_without_an_ok_image_is_scored(detector):
    batch = _decoded_batch()
    errors = {k: v[[2, 4]] for k, v in batch.items()}
    scored = detector.score(errors)
    assert scored.num_rows == 2 and scored.column("score").to_pylist() == [[], []]


# --- inference.decode: gpu: JPEGs decoded in the actor ------------------------------------------------

_JPEG = jpeg_bytes(size=(48, 40), seed=7)
JPEG_ROWS = [
    *READ_ROWS,
    (0, 4, False, "in/f.jpg", 15, _JPEG, None),
    (0, 5, False, "in/g.jpg", 16, jpeg_bytes(size=(30, 50), mode="L", seed=8), None),
    (0, 6, False, "in/h.jpg", 17, jpeg_bytes(size=(40, 30), mode="CMYK", seed=9), None),  # decoded on CPU
    (0, 7, False, "in/i.jpg", 18, _JPEG[: _JPEG.index(b"\xff\xda")] + b"\xff\xd9", None),  # no scan: the actor's decode fails, CPU's error
    (0, 8, False, "in/j.jpg", 19, _JPEG[:300], None),  # truncated: the decode task's error row
]


def test_jpegs_decoded_in_the_actor_score_as_the_cpu_decoded_rows(detector):
    kept = _decoded_batch(JPEG_ROWS, keep_jpeg=True)
    assert list(kept["status"]).count(ENCODED) == 3  # f, g and i travel as files
    on_cpu = detector.score(_decoded_batch(JPEG_ROWS)).to_pylist()
    in_actor = detector.score(kept).to_pylist()
    assert in_actor == on_cpu  # row for row: status, error, size, every box and score
    rows = {row["uri"]: row for row in in_actor}
    assert rows["in/i.jpg"]["status"] == "error" and rows["in/i.jpg"]["error"].startswith("corrupt image")
    assert rows["in/j.jpg"]["error"].startswith("corrupt image")
    assert [rows[u]["status"] for u in ("in/f.jpg", "in/g.jpg", "in/h.jpg")] == ["ok"] * 3
    assert (rows["in/g.jpg"]["width"], rows["in/g.jpg"]["height"]) == (30, 50)


def test_a_crash_outside_the_model_retries_the_same_rows():
    """An attempt record that says its rows had left the model (overlap: the call was committing, or waiting
    while the other call crashed the actor) is retried as it is; one still in the model is split."""
    state = {"queue": [[0, 8], [8, 16]], "suspect": [], "crashed": []}
    assert _after_crash({**state, "in_model": False}) == state
    assert _after_crash(dict(state))["queue"] == [[0, 4], [4, 8], [8, 16]]
    single = {"queue": [[3, 4]], "suspect": [3], "crashed": []}
    assert _after_crash({**single, "in_model": False}) == single  # not marked crashed for another call's death
    assert _after_crash(dict(single))["crashed"] == [3]


# --- __call__: score, then commit ---------------------------------------------------------------------


def test_call_commits_file_pairs_and_returns_counts(detector_class, tmp_path):
    torch.manual_seed(0)
    det = detector_class(output=str(tmp_path))
    batch = _decoded_batch()
    summary = det(batch)
    scored = det.score(batch).to_pylist()  # the same model, the same images: the same detections

    assert summary.schema == SUMMARY_SCHEMA
    assert sorted(summary.to_pylist(), key=lambda r: r["unit"]) == [
        {"unit": 0, "images_ok": 2, "images_error": 2, "detections": 10},
        {"unit": 1, "images_ok": 1, "images_error": 0, "detections": 5},
    ]
    names = sorted([part_name(0, 0, 4, False), part_name(1, 0, 1, True)])
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == names
    assert sorted(p.name for p in (tmp_path / "detections").iterdir()) == names

    images = pq.read_table(tmp_path / "images" / part_name(0, 0, 4, False))
    assert images.schema == IMAGES_SCHEMA
    assert images.column("uri").to_pylist() == ["in/a.png", "in/b.png", "in/c.png", "in/e.png"]
    assert images.column("num_detections").to_pylist() == [5, 0, 5, 0]
    assert images.column("status").to_pylist() == ["ok", "error", "ok", "error"]

    detections = pq.read_table(tmp_path / "detections" / part_name(1, 0, 1, True))
    assert detections.schema == DETECTIONS_SCHEMA
    d = next(row for row in scored if row["uri"] == "in/d.png")
    assert detections.column("image_id").to_pylist() == [13] * 5
    assert detections.column("category").to_pylist() == d["category"]
    written = np.stack([detections.column(c).to_numpy() for c in ("x_min", "y_min", "x_max", "y_max")], axis=1)
    np.testing.assert_array_equal(written, np.array(d["box"], np.float32).reshape(-1, 4))


def test_call_on_s3_names_parts_by_generation(detector_class, s3_bucket):
    from detbatch import storage

    out = f"{s3_bucket}/run"
    det = detector_class(output=out, generation=2)
    batch = {k: v[[1, 2]] for k, v in _decoded_batch().items()}  # unit 0, indices 0 and 1
    assert det(batch).to_pylist() == [{"unit": 0, "images_ok": 1, "images_error": 1, "detections": 5}]
    name = part_name(0, 0, 2, False, generation=2)
    assert storage.list_names(f"{out}/images") == storage.list_names(f"{out}/detections") == [name]
    images = pq.read_table(pa.BufferReader(storage.read_bytes(f"{out}/images/{name}")))
    assert images.column("uri").to_pylist() == ["in/a.png", "in/b.png"]
    assert pq.read_table(pa.BufferReader(storage.read_bytes(f"{out}/detections/{name}"))).num_rows == 5


# --- select_device --------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_an_error():
    with pytest.raises(RuntimeError, match="inference.device is 'cuda' but this worker sees no GPU"):
        select_device("cuda")
    assert select_device("auto") == "cpu"


@pytest.mark.parametrize("has_gpu, auto", [(False, "cpu"), (True, "cuda")])
def test_auto_picks_the_gpu_when_there_is_one(monkeypatch, has_gpu, auto):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: has_gpu)
    assert select_device("auto") == auto
    assert select_device("cpu") == "cpu"
    if has_gpu:
        assert select_device("cuda") == "cuda"
    else:
        with pytest.raises(RuntimeError, match="use device: auto or cpu"):
            select_device("cuda")
