"""Training data without Ray: sources, the read tasks over files and shards, bad data as rows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from detbatch.config import ConfigError
from detbatch.datasets.prepare import prepare_shards
from detbatch.datasets.synth import synthesize
from detbatch.training.data import TRAINING_SAMPLE_SCHEMA, count_rows, load_source, read_image_files, read_shards


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data-shapes")
    synthesize(str(root), 10, seed=4, image_size=48, max_objects=2)
    coco = json.loads((root / "annotations.json").read_text())
    coco["annotations"].append({"id": 999, "image_id": 2, "category_id": 3, "bbox": [40, 40, 30, 30], "iscrowd": 0})
    (root / "annotations.json").write_text(json.dumps(coco))
    (root / "images" / "000003.png").write_bytes(b"not a png")
    return root


def _rows(table) -> dict[int, dict]:
    return {r["image_id"]: r for r in table.to_pylist()}


def _batch(items: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.array([it[k] for it in items], dtype=object) for k in items[0]}


def test_image_files_read_decode_and_clean(shapes):
    source = load_source(str(shapes / "annotations.json"), None, None, "train")
    assert source.kind == "images" and source.num_images == 10
    assert [c["name"] for c in source.categories] == ["square", "circle", "triangle"]
    table = read_image_files(_batch(source.items), category_ids=[1, 2, 3])
    assert table.schema == TRAINING_SAMPLE_SCHEMA
    rows = _rows(table)
    assert rows[3]["error"].startswith(("corrupt", "not an image")) and rows[3]["pixels"] == b""
    assert rows[2]["invalid_boxes"] == 1 and sum(r["invalid_boxes"] for r in rows.values()) == 1
    coco = json.loads((shapes / "annotations.json").read_text())
    first = [a for a in coco["annotations"] if a["image_id"] == 1]
    assert rows[1]["bbox"] == [v for a in first for v in a["bbox"]]
    assert rows[1]["category_id"] == [a["category_id"] for a in first]
    assert len(rows[1]["pixels"]) == rows[1]["height"] * rows[1]["width"] * 3 == 48 * 48 * 3


@pytest.mark.parametrize("fmt", ["tar", "parquet"])
def test_shards_give_the_same_rows_as_files(shapes, tmp_path, fmt):
    out = str(tmp_path / fmt)
    prepare_shards(str(shapes / "images"), out, fmt, annotations=str(shapes / "annotations.json"), images_per_shard=4)
    source = load_source(None, None, out, "train")
    assert source.kind == fmt and len(source.items) == 3 and source.num_images == 10
    kwargs = {"category_ids": [1, 2, 3], "split": "all", "seed": 0, "val_fraction": 0.0}
    from_shards = {}
    for table in read_shards(_batch(source.items), **kwargs):
        assert table.schema == TRAINING_SAMPLE_SCHEMA
        from_shards.update(_rows(table))
    from_files = _rows(read_image_files(_batch(load_source(str(shapes / "annotations.json"), None, None, "train").items), **kwargs))
    assert from_shards.keys() == from_files.keys()
    for image_id, row in from_files.items():
        for key in ("pixels", "bbox", "category_id", "invalid_boxes", "height", "width"):
            assert from_shards[image_id][key] == row[key], (image_id, key)
        assert (from_shards[image_id]["error"] is None) == (row["error"] is None)
    # The seeded split is applied inside the shard reader: train and val partition the images.
    train = {i for t in read_shards(_batch(source.items), **{**kwargs, "split": "train", "val_fraction": 0.5}) for i in _rows(t)}
    val = {i for t in read_shards(_batch(source.items), **{**kwargs, "split": "val", "val_fraction": 0.5}) for i in _rows(t)}
    assert train | val == set(from_files) and not train & val and train and val
    assert count_rows(source, "val", 0, 0.5) == 5


def test_sources_fail_fast_with_the_fix(shapes, tmp_path):
    with pytest.raises(Exception, match="cannot read annotations"):
        load_source(str(tmp_path / "missing.json"), None, None, "train")
    coco = json.loads((shapes / "annotations.json").read_text())
    (tmp_path / "nocats.json").write_text(json.dumps({**coco, "categories": []}))
    with pytest.raises(ConfigError, match="no categories"):
        load_source(str(tmp_path / "nocats.json"), str(shapes / "images"), None, "train")
    with pytest.raises(ConfigError, match="--train-images"):
        load_source(str(shapes / "annotations.json"), str(tmp_path), None, "train")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "a.json").write_text(json.dumps(coco))
    with pytest.raises(ConfigError, match="give --val-images"):
        load_source(str(tmp_path / "elsewhere" / "a.json"), None, None, "val")
    prepare_shards(str(shapes / "images"), str(tmp_path / "plain"), "tar")
    with pytest.raises(ConfigError, match="--annotations"):
        load_source(None, None, str(tmp_path / "plain"), "train")
    with pytest.raises(ConfigError, match="dataset.json not found"):
        load_source(None, None, str(tmp_path / "nowhere"), "train")
    assert os.path.isdir(shapes / "images")


def test_tar_samples_without_an_image_or_cut_short_become_error_rows(tmp_path):
    import io
    import tarfile

    from detbatch.training.data import _shard_samples

    def meta(image_id: int) -> bytes:
        return json.dumps({"image_id": image_id, "annotations": [{"bbox": [1, 2, 3, 4], "category_id": 1}]}).encode()

    png = b"\x89PNG\r\n\x1a\n" + bytes(3000)  # bytes only: the reader does not decode
    members = [("a.png", png), ("a.json", meta(7)), ("b.json", meta(8)), ("c.png", png), ("c.json", meta(9))]
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    rows = list(_shard_samples(str(shard)))
    assert [(r[0].rsplit("#", 1)[1], r[1], r[3]) for r in rows] == [
        ("a.png", 7, None), ("b.?", 8, "no image member in the sample (b.json)"), ("c.png", 9, None)]  # fmt: skip
    assert rows[0][2] == png and json.loads(rows[0][4]) == [{"bbox": [1, 2, 3, 4], "category_id": 1}]

    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes()[: 512 * 13])  # stops inside c.png
    rows = list(_shard_samples(str(cut)))
    assert [r[1] for r in rows[:2]] == [7, 8] and rows[-1][0] == str(cut) and "shard unreadable" in rows[-1][3]


def test_parquet_shard_without_ids_or_annotations_becomes_error_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.helpers.images import png_bytes

    no_ids, no_annotations = tmp_path / "no-ids.parquet", tmp_path / "no-annotations.parquet"
    pq.write_table(pa.table({"file_name": ["a.png"], "image": [png_bytes()], "image_id": pa.array([None], pa.int64()), "annotations": ["[]"]}), no_ids)
    pq.write_table(pa.table({"file_name": ["a.png"], "image": [png_bytes()], "image_id": [1]}), no_annotations)
    kwargs = {"category_ids": [1], "split": "all", "seed": 0, "val_fraction": 0.0}
    (table,) = read_shards({"uri": np.array([str(no_ids), str(no_annotations)], dtype=object)}, **kwargs)
    assert table.schema == TRAINING_SAMPLE_SCHEMA
    rows = table.to_pylist()
    assert [(r["uri"], r["image_id"], r["pixels"], r["height"]) for r in rows] == [(f"{no_ids}#a.png", -1, b"", 0), (str(no_annotations), -1, b"", 0)]
    assert rows[0]["error"] == "no image_id in the shard (make shards with --annotations)"
    assert rows[1]["error"].startswith("shard unreadable: InputError: ") and "lack 'annotations'" in rows[1]["error"]


def test_missing_image_file_is_an_error_row(tmp_path):
    items = [{"image_id": 1, "uri": str(tmp_path / "gone.png"), "annotations": "[]"}]
    (row,) = read_image_files(_batch(items), category_ids=[1]).to_pylist()
    assert row["error"].startswith("file not found") and row["pixels"] == b"" and row["bbox"] == []


def test_read_tasks_apply_detects_caps(shapes, tmp_path):
    items = load_source(str(shapes / "annotations.json"), None, None, "train").items[:2]
    kwargs = {"category_ids": [1, 2, 3], "split": "all", "seed": 0, "val_fraction": 0.0}
    rows = read_image_files(_batch(items), **kwargs, max_pixels=48 * 48 - 1).to_pylist()
    assert [r["error"] for r in rows] == ["image of 48x48 = 2304 pixels exceeds input.max_pixels=2303"] * 2
    assert all(r["pixels"] == b"" and r["bbox"] == [] for r in rows)
    size = os.path.getsize(shapes / "images" / "000001.png")
    (row, _) = read_image_files(_batch(items), **kwargs, max_bytes=size - 1).to_pylist()
    assert row["error"] == f"file of {size} bytes exceeds input.max_bytes={size - 1}"
    out = str(tmp_path / "tar")
    prepare_shards(str(shapes / "images"), out, "tar", annotations=str(shapes / "annotations.json"), images_per_shard=10)
    (table,) = read_shards(_batch(load_source(None, None, out, "train").items), **kwargs, max_bytes=size - 1)
    assert table.to_pylist()[0]["error"] == f"image member 000001.png of {size} bytes exceeds input.max_bytes={size - 1}"
