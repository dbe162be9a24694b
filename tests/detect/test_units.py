import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from detbatch.detect import read, units
from detbatch.detect.decode import decode_batch, decode_image


def _png(color=(255, 0, 0), size=(20, 10), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def image_dir(tmp_path):
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    for name in ["b.png", "a.png", "sub/c.PNG"]:
        (root / name).write_bytes(_png())
    (root / "notes.txt").write_text("not listed: not an image extension")
    return root


def test_list_folder_sorted_recursive(image_dir):
    listing = units.list_input(str(image_dir))
    assert listing.kind == "images"
    assert [listing.relative_name(u) for u in listing.uris] == ["a.png", "b.png", "sub/c.PNG"]


def test_list_glob(image_dir):
    listing = units.list_input(str(image_dir / "*.png"))
    assert [listing.relative_name(u) for u in listing.uris] == ["a.png", "b.png"]


def test_list_missing_prefix_is_clear(tmp_path):
    with pytest.raises(units.InputError, match="no such file, folder or prefix"):
        units.list_input(str(tmp_path / "nope"))


def test_list_mixed_kinds_asks_for_format(image_dir):
    (image_dir / "s.tar").write_bytes(b"")
    with pytest.raises(units.InputError, match="--input-format"):
        units.list_input(str(image_dir))
    assert units.list_input(str(image_dir), "tar").kind == "tar"


def test_listing_digest_changes_with_input(image_dir):
    before = units.list_input(str(image_dir)).digest
    assert units.list_input(str(image_dir)).digest == before
    (image_dir / "d.png").write_bytes(_png())
    assert units.list_input(str(image_dir)).digest != before


def test_derived_id_is_stable_and_positive():
    a = units.derived_image_id("s3://b/x.jpg")
    assert a == units.derived_image_id("s3://b/x.jpg") and 0 <= a < 2**63
    assert a != units.derived_image_id("s3://b/y.jpg")


def test_units_take_ids_from_manifest(image_dir):
    listing = units.list_input(str(image_dir))
    planned = units.plan_units(listing, 2, {"b.png": 7})
    assert [len(u["uris"]) for u in planned] == [2, 1]
    assert planned[0]["image_ids"][1] == 7
    assert planned[0]["image_ids"][0] == units.derived_image_id(listing.uris[0])


def test_read_unit_marks_last_and_skips(image_dir):
    listing = units.list_input(str(image_dir))
    unit = units.plan_units(listing, 10, None)[0]
    rows = list(read.read_unit(unit, listing.root, None, []))
    assert [(r["index"], r["last"]) for r in rows] == [(0, False), (1, False), (2, True)]
    rows = list(read.read_unit(unit, listing.root, None, [(0, 2)]))
    assert [(r["index"], r["last"]) for r in rows] == [(2, True)]


def test_read_vanished_file_is_an_error_row(image_dir):
    listing = units.list_input(str(image_dir))
    unit = units.plan_units(listing, 10, None)[0]
    (image_dir / "a.png").unlink()
    rows = list(read.read_unit(unit, listing.root, None, []))
    assert rows[0]["data"] is None and "not found" in rows[0]["error"]
    assert rows[1]["error"] is None


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_tar_shard_samples_ids_and_truncation(tmp_path):
    shard = tmp_path / "s.tar"
    shard.write_bytes(_tar([("x/a.png", _png()), ("x/a.json", json.dumps({"image_id": 5, "file_name": "a.png"}).encode()),
                            ("x/b.png", _png()), ("x/c.jpg", _png())]))
    unit = {"unit": 0, "kind": "tar", "uris": [str(shard)], "image_ids": []}
    rows = list(read.read_unit(unit, str(tmp_path), None, []))
    assert [r["uri"] for r in rows] == [f"{shard}#x/a.png", f"{shard}#x/b.png", f"{shard}#x/c.jpg"]
    assert rows[0]["image_id"] == 5
    assert rows[1]["image_id"] == units.derived_image_id(f"{shard}#x/b.png")
    assert rows[-1]["last"]

    # Cut inside c.jpg's data (members are 512-byte header + data padded to 512).
    shard.write_bytes(shard.read_bytes()[: 7 * 512 + 20])
    rows = list(read.read_unit(unit, str(tmp_path), None, []))
    assert [r["uri"] for r in rows[:2]] == [f"{shard}#x/a.png", f"{shard}#x/b.png"]
    assert rows[2]["uri"] == str(shard) and "shard unreadable" in rows[2]["error"] and rows[2]["last"]
    assert len(rows) == 3


def test_empty_shard_is_one_error_row(tmp_path):
    shard = tmp_path / "e.tar"
    shard.write_bytes(_tar([]))
    rows = list(read.read_unit({"unit": 3, "kind": "tar", "uris": [str(shard)], "image_ids": []}, str(tmp_path), None, []))
    assert len(rows) == 1 and rows[0]["error"] == "shard holds no images" and rows[0]["last"]


def test_parquet_shard_rows(tmp_path):
    shard = tmp_path / "s.parquet"
    pq.write_table(pa.table({"file_name": ["a.png", "b.png"], "image": [_png(), b"junk"], "image_id": [1, None]}), shard)
    unit = {"unit": 0, "kind": "parquet", "uris": [str(shard)], "image_ids": []}
    rows = list(read.read_unit(unit, str(tmp_path), {"b.png": 9}, []))
    assert [r["image_id"] for r in rows] == [1, 9]
    assert rows[1]["data"] == b"junk" and rows[1]["last"]


@pytest.mark.parametrize(
    "data, message",
    [(b"", "empty file"), (b"hello, not an image", "not an image"), (None, "no data")],
)
def test_decode_errors(data, message):
    array, error = decode_image(data)
    assert array is None and message in error


def test_decode_truncated_jpeg():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, format="JPEG")
    array, error = decode_image(buf.getvalue()[:400])
    assert array is None and "corrupt" in error


@pytest.mark.parametrize("mode, color", [("L", 128), ("RGBA", (1, 2, 3, 4)), ("P", 3)])
def test_decode_converts_to_rgb(mode, color):
    array, error = decode_image(_png(color, (7, 5), mode))
    assert error is None and array.shape == (5, 7, 3) and array.dtype == np.uint8


def test_decode_batch_keeps_bad_rows():
    batch = {
        "unit": np.array([0, 0]), "index": np.array([0, 1]), "last": np.array([False, True]),
        "uri": np.array(["a", "b"], object), "image_id": np.array([1, 2]),
        "data": np.array([_png(size=(4, 3)), b"bad"], object), "error": np.array([None, None], object),
    }
    table = decode_batch(batch).to_pydict()
    assert table["status"] == ["ok", "error"] and (table["width"], table["height"]) == ([4, 0], [3, 0])
    assert len(table["pixels"][0]) == 4 * 3 * 3 and table["error"][0] is None
