"""Reading units in Ray tasks (here without Ray): files, tar and Parquet shards, error rows."""

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq

from detbatch.detect import read, units
from tests.helpers.images import png_bytes


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
    shard.write_bytes(_tar([("x/a.png", png_bytes()), ("x/a.json", json.dumps({"image_id": 5, "file_name": "a.png"}).encode()),
                            ("x/b.png", png_bytes()), ("x/c.jpg", png_bytes())]))
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
    pq.write_table(pa.table({"file_name": ["a.png", "b.png"], "image": [png_bytes(), b"junk"], "image_id": [1, None]}), shard)
    unit = {"unit": 0, "kind": "parquet", "uris": [str(shard)], "image_ids": []}
    rows = list(read.read_unit(unit, str(tmp_path), {"b.png": 9}, []))
    assert [r["image_id"] for r in rows] == [1, 9]
    assert rows[1]["data"] == b"junk" and rows[1]["last"]
