from __future__ import annotations

import io
import json
import logging
import math
import shutil
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from detbatch.datasets import prepare as prepare_module
from detbatch import storage
from detbatch.datasets.prepare import list_image_files, parquet_schema, prepare_shards, sample_key
from detbatch.datasets.synth import synthesize


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """12 synthetic images: ``shapes/images/000001.png`` ... and ``shapes/annotations.json``."""
    out = tmp_path_factory.mktemp("shapes")
    synthesize(str(out), num_images=12, seed=11, image_size=64)
    return out


@pytest.fixture
def mixed(tmp_path, shapes) -> Path:
    """A folder of images in subfolders with mixed-case extensions, dots in names, and non-images."""
    root = tmp_path / "mixed"
    sources = sorted((shapes / "images").iterdir())
    layout = ["z.png", "a/b/c.PNG", "a/b.v2.Png", "a/x.jpeg", "m/n/o/p.tiff"]
    for name, source in zip(layout, sources):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root / name)
    (root / "notes.txt").write_text("not an image")
    (root / "a" / "png").write_text("no extension")
    return root


def read_tar(uri: str) -> list[tuple[str, bytes, bytes, dict]]:
    """``(key, image extension, image bytes, json)`` per sample, checking the WebDataset layout."""
    with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(uri))) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    assert len(members) % 2 == 0
    samples = []
    for (image_name, image), (json_name, meta) in zip(members[::2], members[1::2]):
        key, extension = image_name.split(".", 1)
        assert json_name == f"{key}.json" and "." not in key
        samples.append((key, extension, image, json.loads(meta)))
    return samples


def read_parquet(uri: str) -> pq.ParquetFile:
    return pq.ParquetFile(io.BytesIO(storage.read_bytes(uri)))


def coco_by_file_name(annotations: Path) -> tuple[dict[str, dict], dict[int, list[dict]]]:
    coco = json.loads(annotations.read_text())
    anns: dict[int, list[dict]] = {i["id"]: [] for i in coco["images"]}
    for a in coco["annotations"]:
        anns[a["image_id"]].append(a)
    return {i["file_name"]: i for i in coco["images"]}, anns


def test_tar_round_trip_on_coco128(coco128, tmp_path):
    annotations = coco128 / "annotations" / "instances.json"
    result = prepare_shards(str(coco128 / "images"), str(tmp_path), "tar", annotations=str(annotations), images_per_shard=50)
    assert (result.num_images, result.num_shards, result.num_skipped) == (128, 3, 0)
    assert result.shard_uris == [str(tmp_path / f"shard-{k:06d}.tar") for k in range(3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset.json", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]

    images, anns = coco_by_file_name(annotations)
    samples = [s for uri in result.shard_uris for s in read_tar(uri)]
    assert [len(read_tar(uri)) for uri in result.shard_uris] == [50, 50, 28]
    assert [meta["file_name"] for *_, meta in samples] == sorted(images)
    for key, extension, image, meta in samples:
        info = images[meta["file_name"]]
        assert key == meta["file_name"].removesuffix(".jpg") and extension == "jpg"
        assert image == (coco128 / "images" / meta["file_name"]).read_bytes()
        assert (meta["image_id"], meta["width"], meta["height"]) == (info["id"], info["width"], info["height"])
        assert meta["annotations"] == anns[info["id"]]
    assert sum(len(meta["annotations"]) for *_, meta in samples) == 939

    manifest = json.loads((tmp_path / "dataset.json").read_text())
    assert manifest["format"] == "tar" and manifest["num_images"] == 128 and manifest["num_shards"] == 3
    assert manifest["images_root"] == str(coco128 / "images")
    assert manifest["categories"] == json.loads(annotations.read_text())["categories"]
    assert manifest["shards"] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]


def test_parquet_round_trip_on_coco128(coco128, tmp_path):
    annotations = coco128 / "annotations" / "instances.json"
    result = prepare_shards(str(coco128 / "images"), str(tmp_path), "parquet", annotations=str(annotations), images_per_shard=100)
    assert (result.num_images, result.num_shards) == (128, 2)

    images, anns = coco_by_file_name(annotations)
    files = [read_parquet(uri) for uri in result.shard_uris]
    assert [f.metadata.num_rows for f in files] == [100, 28]
    assert all(f.schema_arrow.equals(parquet_schema()) for f in files)
    rows = [row for f in files for row in f.read().to_pylist()]
    assert [row["file_name"] for row in rows] == sorted(images)
    for row in rows:
        info = images[row["file_name"]]
        assert row["image"] == (coco128 / "images" / row["file_name"]).read_bytes()
        assert (row["image_id"], row["width"], row["height"]) == (info["id"], info["width"], info["height"])
        assert json.loads(row["annotations"]) == anns[info["id"]]
    assert json.loads((tmp_path / "dataset.json").read_text())["format"] == "parquet"


def test_parquet_row_groups_are_bounded(shapes, tmp_path, monkeypatch):
    assert prepare_module.PARQUET_ROW_GROUP_ROWS == 256
    monkeypatch.setattr(prepare_module, "PARQUET_ROW_GROUP_ROWS", 5)
    result = prepare_shards(str(shapes / "images"), str(tmp_path), "parquet", images_per_shard=11)
    first, second = (read_parquet(uri).metadata for uri in result.shard_uris)
    assert [first.row_group(i).num_rows for i in range(first.num_row_groups)] == [5, 5, 1]
    assert [second.row_group(i).num_rows for i in range(second.num_row_groups)] == [1]


def test_folder_without_annotations(mixed, tmp_path):
    expected = ["a/b.v2.Png", "a/b/c.PNG", "a/x.jpeg", "m/n/o/p.tiff", "z.png"]
    assert list_image_files(str(mixed)) == expected
    tar = prepare_shards(str(mixed), str(tmp_path / "tar"), "tar", images_per_shard=2)
    samples = [s for uri in tar.shard_uris for s in read_tar(uri)]
    assert [(key, extension) for key, extension, *_ in samples] == [
        ("a__b_v2", "png"), ("a__b__c", "png"), ("a__x", "jpeg"), ("m__n__o__p", "tiff"), ("z", "png"),
    ]
    assert [meta for *_, meta in samples] == [{"file_name": name} for name in expected]
    assert [image for _, _, image, _ in samples] == [(mixed / name).read_bytes() for name in expected]

    parquet = prepare_shards(str(mixed), str(tmp_path / "parquet"), "parquet")
    table = read_parquet(parquet.shard_uris[0]).read()
    assert table.column("file_name").to_pylist() == expected
    for column in ("image_id", "width", "height", "annotations"):
        assert table.column(column).null_count == 5
    assert json.loads((tmp_path / "parquet" / "dataset.json").read_text())["categories"] == []


@pytest.mark.parametrize("images_per_shard, shard_sizes", [(1, [1] * 12), (5, [5, 5, 2]), (12, [12]), (1000, [12])])
def test_shard_counts(shapes, tmp_path, images_per_shard, shard_sizes):
    result = prepare_shards(str(shapes / "images"), str(tmp_path), "tar", images_per_shard=images_per_shard)
    assert result.num_shards == len(shard_sizes) == math.ceil(12 / images_per_shard)
    assert [len(read_tar(uri)) for uri in result.shard_uris] == shard_sizes
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == [f"shard-{k:06d}.tar" for k in range(len(shard_sizes))]


def test_shards_are_reproducible(shapes, tmp_path):
    for name in ("a", "b"):
        prepare_shards(str(shapes / "images"), str(tmp_path / name), "tar", annotations=str(shapes / "annotations.json"))
    assert (tmp_path / "a" / "shard-000000.tar").read_bytes() == (tmp_path / "b" / "shard-000000.tar").read_bytes()


@pytest.mark.parametrize("format", ["tar", "parquet"])
def test_s3_to_s3(s3_bucket, format):
    source = synthesize(f"{s3_bucket}/shapes", num_images=7, seed=4, image_size=64)
    out = f"{s3_bucket}/shards/{format}"
    result = prepare_shards(source.images_uri, out, format, annotations=source.annotations_uri, images_per_shard=3)
    assert result.shard_uris == [f"{out}/shard-{k:06d}.{format}" for k in range(3)]

    coco = json.loads(storage.read_text(source.annotations_uri))
    if format == "tar":
        records = [meta | {"image": image} for uri in result.shard_uris for *_, image, meta in read_tar(uri)]
    else:
        records = [row for uri in result.shard_uris for row in read_parquet(uri).read().to_pylist()]
        for row in records:
            row["annotations"] = json.loads(row["annotations"])
    assert [r["image_id"] for r in records] == list(range(1, 8))
    for record in records:
        assert record["image"] == storage.read_bytes(storage.join(source.images_uri, record["file_name"]))
        assert record["annotations"] == [a for a in coco["annotations"] if a["image_id"] == record["image_id"]]
    manifest = json.loads(storage.read_text(f"{out}/dataset.json"))
    assert (manifest["num_images"], manifest["num_shards"], manifest["images_root"]) == (7, 3, source.images_uri)


def test_unlisted_images_are_skipped_with_a_warning(shapes, tmp_path, caplog):
    coco = json.loads((shapes / "annotations.json").read_text())
    coco["images"] = coco["images"][:8][::-1]  # packing order is file_name order, not the JSON's
    (tmp_path / "subset.json").write_text(json.dumps(coco))
    with caplog.at_level(logging.WARNING, logger="detbatch.datasets.prepare"):
        result = prepare_shards(str(shapes / "images"), str(tmp_path / "out"), "tar", annotations=str(tmp_path / "subset.json"))
    assert (result.num_images, result.num_skipped) == (8, 4)
    assert "4 images" in caplog.text and "000009.png" in caplog.text
    assert [meta["image_id"] for *_, meta in read_tar(result.shard_uris[0])] == list(range(1, 9))


def test_images_missing_from_the_folder_are_an_error(shapes, tmp_path):
    coco = json.loads((shapes / "annotations.json").read_text())
    coco["images"].append({"id": 99, "file_name": "gone.png", "width": 64, "height": 64})
    (tmp_path / "extra.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"1 images listed in .*extra.json are not under .*: gone.png"):
        prepare_shards(str(shapes / "images"), str(tmp_path / "out"), "tar", annotations=str(tmp_path / "extra.json"))
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(shapes, tmp_path):
    images = str(shapes / "images")
    prepare_shards(images, str(tmp_path), "tar", images_per_shard=2)
    with pytest.raises(FileExistsError, match="overwrite"):
        prepare_shards(images, str(tmp_path), "tar", images_per_shard=6)
    result = prepare_shards(images, str(tmp_path), "parquet", images_per_shard=6, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset.json", "shard-000000.parquet", "shard-000001.parquet"]
    assert result.num_shards == 2


def test_webdataset_key_collisions_are_an_error_for_tar_only(shapes, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(shapes / "images" / "000001.png", folder / "a.b.png")
    shutil.copy(shapes / "images" / "000002.png", folder / "a_b.png")
    with pytest.raises(ValueError, match="same WebDataset key 'a_b'"):
        prepare_shards(str(folder), str(tmp_path / "tar"), "tar")
    assert prepare_shards(str(folder), str(tmp_path / "parquet"), "parquet").num_images == 2


def test_sample_key():
    assert sample_key("dir/sub/img.001.JPG") == "dir__sub__img_001"
    assert sample_key("plain.png") == "plain"


def test_bad_inputs(shapes, tmp_path):
    images = str(shapes / "images")
    with pytest.raises(ValueError, match="unknown format 'zip'; choose one of: tar, parquet"):
        prepare_shards(images, str(tmp_path / "o"), "zip")
    with pytest.raises(ValueError, match="images_per_shard=0"):
        prepare_shards(images, str(tmp_path / "o"), "tar", images_per_shard=0)
    with pytest.raises(storage.StorageError, match="no such file"):
        prepare_shards(str(tmp_path / "nowhere"), str(tmp_path / "o"), "tar")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files under it"):
        prepare_shards(str(tmp_path / "empty"), str(tmp_path / "o"), "tar")
    with pytest.raises(ValueError, match="is a file"):
        prepare_shards(str(shapes / "images" / "000001.png"), str(tmp_path / "o"), "tar")
    missing = str(tmp_path / "missing.json")
    with pytest.raises(storage.StorageError, match=f"cannot read annotations: {missing}.*COCO instances JSON"):
        prepare_shards(images, str(tmp_path / "o"), "tar", annotations=missing)
    (tmp_path / "broken.json").write_text('{"images": [')
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        prepare_shards(images, str(tmp_path / "o"), "tar", annotations=str(tmp_path / "broken.json"))
    (tmp_path / "other.json").write_text('{"info": {}}')
    with pytest.raises(ValueError, match="other.json: no 'images' list"):
        prepare_shards(images, str(tmp_path / "o"), "tar", annotations=str(tmp_path / "other.json"))
    assert not (tmp_path / "o").exists()
