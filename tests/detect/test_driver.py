"""detect end to end on the shared two-node Ray cluster: local and S3, files and shards, bad input,
resume after a killed driver, a killed actor, and the output contract read back with pandas."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from detbatch import storage
from detbatch.config import ConfigError, load_config
from detbatch.detect.config import DetectConfig
from detbatch.detect.driver import run_detect
from detbatch.detect.stream import read_and_decode
from detbatch.detect.output import open_output
from detbatch.datasets.prepare import prepare_shards
from detbatch.detect.sink import DETECTIONS_SCHEMA, IMAGES_SCHEMA
from detbatch.detect.units import derived_image_id
from detbatch.datasets.synth import synthesize

pytestmark = pytest.mark.usefixtures("ray_cluster")

FAST_MODEL = "ssdlite320_mobilenet_v3_large"
DETECTOR_CLASS = "MapWorker(MapBatches(Detector))"


def _config(input_uri: str, output_uri: str, **overrides) -> DetectConfig:
    values = {
        "input.uri": input_uri,
        "output.uri": output_uri,
        "model.name": FAST_MODEL,
        "model.weights": "none",
        "model.score_threshold": 0.0,  # random weights score low: keep every box so detections exist
        "model.detections_per_image": 5,
        "inference.batch_size": 4,
        "inference.device": "cpu",
        **overrides,
    }
    return load_config(DetectConfig, None, values)


def _read(output: str, table: str) -> pd.DataFrame:
    fs, path = storage.resolve(output)
    return pd.read_parquet(storage.join(path, table), filesystem=fs)


def _check_contract(output: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Schemas exactly as documented; every image once; detections agree with num_detections."""
    fs, path = storage.resolve(output)
    for table, schema in (("images", IMAGES_SCHEMA), ("detections", DETECTIONS_SCHEMA)):
        files = fs.glob(storage.join(path, table, "*.parquet"))
        assert files
        with fs.open(files[0], "rb") as f:
            assert pq.read_schema(f) == schema
    images, detections = _read(output, "images"), _read(output, "detections")
    assert not images["uri"].duplicated().any()
    per_image = detections.groupby("uri").size()
    expected = images.set_index("uri")["num_detections"]
    assert per_image.reindex(expected.index, fill_value=0).equals(expected.astype(per_image.dtype))
    assert not detections.duplicated().any()
    return images, detections


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """20 synthetic images, plus one bad file of each kind."""
    root = tmp_path_factory.mktemp("shapes")
    synthesize(str(root), 20, seed=3)
    images = root / "images"
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    good = (images / "000001.png").read_bytes()
    (images / "truncated.png").write_bytes(good[: len(good) // 3])
    (images / "empty.png").write_bytes(b"")
    (images / "text.jpg").write_text("this is not an image")
    return root


def test_local_end_to_end_pool_on_both_nodes(shapes, tmp_path):
    from ray.util.state import list_actors

    out = str(tmp_path / "out")
    config = _config(
        str(shapes / "images"),
        out,
        **{"inference.min_actors": 2, "inference.max_actors": 2, "inference.actor_resources": {"detector_slot": 1},
           "input.images_per_unit": 6, "inference.object_store_fraction": 0.2},
    )
    before = {a.actor_id for a in list_actors(filters=[("class_name", "=", DETECTOR_CLASS)], limit=10000)}
    summary = run_detect(config)

    assert (summary.images_ok, summary.images_error) == (20, 4)
    assert summary.detections == 20 * 5
    from ray.data import DataContext

    assert DataContext.get_current().override_object_store_memory_limit_fraction == 0.2  # what Ray Data ran with
    images, detections = _check_contract(out)
    bad = images[images.status == "error"]
    errors = bad.set_index(bad.uri.str.rsplit("/", n=1).str[-1])["error"]
    assert set(errors.index) == {"corrupt.jpg", "truncated.png", "empty.png", "text.jpg"}
    assert errors["empty.png"] == "empty file" and "not an image" in errors["text.jpg"]
    assert "corrupt" in errors["truncated.png"]
    ok = images[images.status == "ok"]
    assert ok["error"].isna().all() and (ok.width == 128).all() and (ok.height == 128).all()
    assert (images.image_id == images.uri.map(derived_image_id)).all()

    boxes = detections.merge(images[["uri", "width", "height"]], on="uri")
    assert (boxes.x_min >= 0).all() and (boxes.x_max <= boxes.width).all() and (boxes.y_max <= boxes.height).all()
    assert (boxes.x_min <= boxes.x_max).all()
    from torchvision.models.detection import SSDLite320_MobileNet_V3_Large_Weights as W

    names = W.DEFAULT.meta["categories"]
    assert all(names[c] == n for c, n in zip(detections.category_id, detections.category))

    # The documented pandas query.
    top = detections.sort_values("score").iloc[-1]
    picked = pd.read_parquet(f"{out}/detections", filters=[("category", "==", top.category), ("score", ">", 0.0)])
    assert len(picked) == (detections.category == top.category).sum()

    run = json.loads(Path(out, "run.json").read_text())
    assert run["counts"] == {"images_ok": 20, "images_error": 4, "detections": 100}
    assert run["model"]["name"] == FAST_MODEL and run["versions"]["ray"]

    new = [a for a in list_actors(filters=[("class_name", "=", DETECTOR_CLASS)], limit=10000, detail=True)
           if a.actor_id not in before]
    assert len({a.node_id for a in new}) == 2, "the pool's two actors should sit on two nodes"

    # A finished output is not recomputed ...
    files = sorted(p.name for p in Path(out, "images").iterdir())
    again = run_detect(config)
    assert again.already_complete and again.images_processed == 0 and again.detections == 100
    assert sorted(p.name for p in Path(out, "images").iterdir()) == files
    # ... and other settings are refused, naming what changed, unless --overwrite.
    changed = config.model_copy(deep=True)
    changed.model.score_threshold = 0.5
    with pytest.raises(ConfigError, match=r"score_threshold: 0.0 -> 0.5.*--overwrite"):
        run_detect(changed)
    changed.output.overwrite = True
    changed.input.images_per_unit = 64
    changed.inference.object_store_fraction = None
    assert run_detect(changed).images_ok == 20
    assert DataContext.get_current().override_object_store_memory_limit_fraction is None  # set per run, not kept
    assert json.loads(Path(out, "run.json").read_text())["fingerprint"]["score_threshold"] == 0.5


def test_each_unit_reaches_the_pool_as_one_block(shapes, ray_cluster, tmp_path):
    """One read task per unit, its images in one block: Ray would otherwise fuse several units into a
    task and hand their images to a single actor while the others wait."""
    from detbatch.detect import units

    config = _config(str(shapes / "images"), str(tmp_path / "out"), **{"output.rows_per_file": 6})
    listing = units.list_input(config.input.uri, "auto")
    assert config.input.images_per_unit is None
    opened = open_output(config, listing)
    opened.lease.release()
    config = opened.config
    assert config.input.images_per_unit == 6  # default: one call
    # A rerun may change rows_per_file (it does not change results): it keeps the units it started with.
    rerun = open_output(_config(config.input.uri, config.output.uri, **{"output.rows_per_file": 10}), listing)
    rerun.lease.release()
    assert rerun.config.input.images_per_unit == 6 and rerun.finished is None
    planned = units.plan_units(listing, config.input.images_per_unit, None)
    assert [len(u["uris"]) for u in planned] == [6, 6, 6, 6]  # 24 files: 20 images + 4 bad ones
    blocks = list(read_and_decode(planned, listing, None, {}, decode_cpus=0.5).iter_batches(batch_size=None, batch_format="pyarrow"))
    assert sorted((b["unit"][0].as_py(), b.num_rows, len(set(b["unit"].to_pylist()))) for b in blocks) == [
        (u, 6, 1) for u in range(4)
    ]


@pytest.mark.parametrize("driver_units", [0, 1_024], ids=["cut-by-a-task", "cut-by-the-driver"])
def test_an_index_files_plan_row_is_cut_into_units_each_read_by_its_own_task(shapes, tmp_path, driver_units):
    """An index file is one plan row (detbatch.detect.plan); it is cut into units (by a task of the stream
    for a large run, by the driver for a small one), the finished ones skipped, and each of the others
    read in a task of its own, its images in one block."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from detbatch.detect import plan, units

    files = sorted(str(p) for p in (shapes / "images").glob("*.png"))[:7]
    (tmp_path / "index").mkdir()
    pacsv.write_csv(pa.table({"uri": files}), tmp_path / "index" / "images.csv")
    listing = units.list_input(str(tmp_path / "index"))
    table = plan.plan_table(units.plan_rows(listing, 2, None), listing.summary())
    assert table.num_rows == 1 and plan.unit_ids(table)[0].tolist() == [0, 1, 2, 3]
    ds = read_and_decode(table, listing.summary(), None, {}, decode_cpus=0.5, finished=np.array([1]),
                         driver_units=driver_units)
    blocks = list(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    assert sorted((b["unit"][0].as_py(), b["uri"].to_pylist()) for b in blocks) == [
        (0, files[0:2]), (2, files[4:6]), (3, files[6:7])]
    stats = ds.stats()
    read_stage = next(line for line in stats.splitlines() if "MapBatches(_read_stage)" in line)
    assert "3 tasks executed" in read_stage, read_stage
    assert ("MapBatches(_units_stage)" in stats) == (driver_units == 0)


def test_shards_of_a_large_run_are_cut_by_a_task_each_read_by_its_own(shapes, tmp_path):
    """Past stream.DRIVER_UNITS units, a run hands Ray Data a few blocks of plan rows; shards (a unit
    each) come out of the units task one block per shard, each read by a task of its own."""
    import numpy as np

    from detbatch.detect import plan, units

    shards = tmp_path / "shards"
    prepare_shards(str(shapes / "images"), str(shards), "tar", images_per_shard=5)
    listing = units.list_input(str(shards))
    table = plan.plan_table(units.plan_rows(listing, 5, None), listing.summary())
    assert listing.kind == "tar" and table.num_rows == 5 and plan.unit_ids(table)[0].tolist() == [0, 1, 2, 3, 4]
    ds = read_and_decode(table, listing.summary(), None, {}, decode_cpus=0.5, finished=np.array([3]), driver_units=0)
    blocks = list(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    assert sorted((b["unit"][0].as_py(), len(set(b["unit"].to_pylist()))) for b in blocks) == [
        (u, 1) for u in (0, 1, 2, 4)]
    assert sum(b.num_rows for b in blocks) == sum(1 for p in (shapes / "images").iterdir()) - 5  # shard 3 finished
    stats = ds.stats()
    assert "MapBatches(_units_stage)" in stats
    read_stage = next(line for line in stats.splitlines() if "MapBatches(_read_stage)" in line)
    assert "4 tasks executed" in read_stage, read_stage


def test_run_json_versions_are_the_installed_ones():
    """Read from package files, without importing torch in the driver (seconds on a small machine)."""
    import pyarrow
    import ray
    import torch
    import torchvision

    from detbatch.detect.driver import _library_versions

    versions = _library_versions()
    assert versions["torch"] == torch.__version__ and versions["torchvision"] == torchvision.__version__
    assert versions["ray"] == ray.__version__ and versions["pyarrow"] == pyarrow.__version__


def test_s3_input_output_with_manifest(s3_bucket):
    data, out = f"{s3_bucket}/data", f"{s3_bucket}/runs/one"
    synthesize(data, 6, seed=5)
    summary = run_detect(_config(f"{data}/images", out, **{"input.manifest": f"{data}/annotations.json"}))
    assert (summary.images_ok, summary.images_error, summary.detections) == (6, 0, 30)
    images, detections = _check_contract(out)
    coco = json.loads(storage.read_text(f"{data}/annotations.json"))
    ids = {f"{data}/images/{im['file_name']}": im["id"] for im in coco["images"]}
    assert dict(zip(images.uri, images.image_id)) == ids
    # pandas over S3 with the fsspec filesystem, as the README shows.
    fs = storage.filesystem(out)
    q = pd.read_parquet(f"{out.removeprefix('s3://')}/detections", filesystem=fs, filters=[("score", ">", 0.0)])
    assert len(q) == (detections.score > 0).sum()
    assert storage.filesystem(out).exists(f"{out.removeprefix('s3://')}/run.json")


def test_unreachable_bucket_is_a_clear_error(s3_endpoint, tmp_path):
    with pytest.raises(Exception, match=r"s3://no-such-bucket-x/images.*(no such|AWS_ENDPOINT_URL)"):
        run_detect(_config("s3://no-such-bucket-x/images", str(tmp_path / "o")))


@pytest.mark.parametrize("fmt", ["tar", "parquet"])
def test_shards(fmt, shapes, tmp_path):
    shards = tmp_path / "shards"
    result = prepare_shards(str(shapes / "images"), str(shards), fmt, annotations=str(shapes / "annotations.json"),
                            images_per_shard=8)
    assert result.num_shards == 3
    (shards / f"shard-999999.{fmt}").write_bytes(b"not a shard at all")
    out = str(tmp_path / "out")
    summary = run_detect(_config(str(shards), out))
    assert (summary.images_ok, summary.images_error) == (20, 1)
    images, _ = _check_contract(out)
    coco = json.loads((shapes / "annotations.json").read_text())
    by_name = {im["file_name"]: im["id"] for im in coco["images"]}
    ok = images[images.status == "ok"]
    assert dict(zip(ok.uri.str.split("#").str[1], ok.image_id)) == by_name
    assert ok.uri.str.match(rf".*/shard-00000[0-2]\.{fmt}#\d{{6}}\.png$").all()
    bad = images[images.status == "error"]
    assert bad.uri.iloc[0].endswith(f"shard-999999.{fmt}") and "shard unreadable" in bad.error.iloc[0]


def test_coco128_real_images(coco128, tmp_path):
    out = str(tmp_path / "out")
    config = _config(str(coco128 / "images"), out, **{"input.manifest": str(coco128 / "annotations/instances.json"),
                                                         "input.images_per_unit": 64, "model.score_threshold": 0.01})
    summary = run_detect(config)
    coco = json.loads((coco128 / "annotations/instances.json").read_text())
    assert summary.images_ok == len(coco["images"]) == 128 and summary.images_error == 0
    images, _ = _check_contract(out)
    truth = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    assert {r.image_id: (r.width, r.height) for r in images.itertuples()} == truth


@pytest.mark.parametrize("cause", ["ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.",
                                   "ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory."])
def test_a_detector_dead_past_its_retries_says_rerun_and_where_to_look(cause, tmp_path):
    """A stream that fails because an actor died more often than its retries allow is a DetectIncomplete
    (exit 1, "rerun the same command"), naming the setting and where the cause is logged, not a traceback."""
    from detbatch.detect.driver import DetectIncomplete, _raise_known_cause
    from detbatch.detect.lease import Lease

    lease = Lease.acquire(str(tmp_path / "out"), 60)
    try:
        with pytest.raises(DetectIncomplete, match=r"died more often than inference\.max_retries.*Rerun the same command"
                           r".*ray logs") as raised:
            _raise_known_cause(RuntimeError(f"Failed to execute map_batches.\n{cause}"), lease, 900)
        assert cause in str(raised.value)
        _raise_known_cause(ValueError("a bug"), lease, 900)  # anything else propagates as it is
    finally:
        lease.release()


def test_the_first_units_commit_their_first_mini_batch_at_once(store, clean):
    """A pool's first results are committed after one mini-batch, not a whole call: the run's first unit
    per actor commits its first mini-batch as a part of its own; every other unit is one part. The rows
    are the clean run's (which commits calls of 2 whole)."""
    from detbatch.detect import sink
    from tests.helpers.exactly_once import NUM_INPUTS, assert_same_as_clean, check_invariants, detect_config

    if store.kind != "local":
        pytest.skip("one storage is enough: the parts are named and committed the same way on S3")
    out = store.output("early")
    summary = run_detect(detect_config(store, out, **{"output.rows_per_file": 6, "inference.batch_size": 2,
                                                      "inference.min_actors": 2, "inference.max_actors": 2}))
    assert summary.images_processed == NUM_INPUTS
    ranges: dict[int, list[tuple[int, int]]] = {}
    for part in sink.read_commit_log(out).parts:
        ranges.setdefault(part.unit, []).append((part.start, part.stop))
    assert ranges == {0: [(0, 2), (2, 6)], 1: [(0, 2), (2, 6)], 2: [(0, 3)]}  # 15 inputs in units of 6
    assert_same_as_clean(out, clean)
    check_invariants(out)
