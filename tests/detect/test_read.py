"""Reading units in Ray tasks (here without Ray): files, tar and Parquet shards, error rows."""

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from detbatch.detect import read, units
from detbatch.errors import InputError
from tests.helpers.images import png_bytes


def test_read_unit_marks_last_and_skips(image_dir):
    listing = units.list_input(str(image_dir))
    unit = units.plan_units(listing, 10, None)[0]
    rows = list(read.read_unit(unit, None, []))
    assert [(r["index"], r["last"]) for r in rows] == [(0, False), (1, False), (2, True)]
    rows = list(read.read_unit(unit, None, [(0, 2)]))
    assert [(r["index"], r["last"]) for r in rows] == [(2, True)]


def test_read_vanished_file_is_an_error_row(image_dir):
    listing = units.list_input(str(image_dir))
    unit = units.plan_units(listing, 10, None)[0]
    (image_dir / "a.png").unlink()
    rows = list(read.read_unit(unit, None, []))
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
    rows = list(read.read_unit(unit, None, []))
    assert [r["uri"] for r in rows] == [f"{shard}#x/a.png", f"{shard}#x/b.png", f"{shard}#x/c.jpg"]
    assert rows[0]["image_id"] == 5
    assert rows[1]["image_id"] == units.derived_image_id(f"{shard}#x/b.png")
    assert rows[-1]["last"]

    # Cut inside c.jpg's data (members are 512-byte header + data padded to 512).
    shard.write_bytes(shard.read_bytes()[: 7 * 512 + 20])
    rows = list(read.read_unit(unit, None, []))
    assert [r["uri"] for r in rows[:2]] == [f"{shard}#x/a.png", f"{shard}#x/b.png"]
    assert rows[2]["uri"] == str(shard) and "shard unreadable" in rows[2]["error"] and rows[2]["last"]
    assert len(rows) == 3


def test_empty_shard_is_one_error_row(tmp_path):
    shard = tmp_path / "e.tar"
    shard.write_bytes(_tar([]))
    rows = list(read.read_unit({"unit": 3, "kind": "tar", "uris": [str(shard)], "image_ids": []}, None, []))
    assert len(rows) == 1 and rows[0]["error"] == "shard holds no images" and rows[0]["last"]


def test_parquet_shard_rows(tmp_path):
    shard = tmp_path / "s.parquet"
    pq.write_table(pa.table({"file_name": ["a.png", "b.png"], "image": [png_bytes(), b"junk"], "image_id": [1, None]}), shard)
    unit = {"unit": 0, "kind": "parquet", "uris": [str(shard)], "image_ids": []}
    rows = list(read.read_unit(unit, {"b.png": 9}, []))
    assert [r["image_id"] for r in rows] == [1, 9]
    assert rows[1]["data"] == b"junk" and rows[1]["last"]


def test_read_file_gives_bytes_or_the_reason(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    assert read.read_file(str(tmp_path / "a.png")) == (png_bytes(), None)
    assert read.read_file(str(tmp_path / "gone.png")) == (None, "file not found (deleted after listing?)")
    data, error = read.read_file(str(tmp_path))  # a folder: not readable as a file
    assert data is None and error.startswith("read failed: ")


def test_tar_samples_parse_the_meta_once_and_tolerate_a_bad_one(tmp_path):
    shard = tmp_path / "s.tar"
    shard.write_bytes(_tar([("a.png", b"A"), ("a.json", b'{"image_id": 5, "annotations": []}'), ("b.json", b"{not json"),
                            ("c.txt", b"label"), ("d.JPG", b"D"), ("d.json", b"[1, 2]"), ("e.json", json.dumps({"image_id": "x"}).encode())]))  # fmt: skip
    samples = list(read.tar_samples(str(shard)))
    assert samples == [
        read.TarSample("a", "a.png", b"A", {"image_id": 5, "annotations": []}),
        read.TarSample("b", None, None, {}),  # not JSON: no metadata, the shard reads on
        read.TarSample("c", None, None, {}),
        read.TarSample("d", "d.JPG", b"D", {}),  # JSON, but not an object
        read.TarSample("e", None, None, {"image_id": "x"}),
    ]
    got = list(read.shard_samples(str(shard), "tar"))
    assert [(s.uri.rsplit("#", 1)[1], s.image_id, s.error) for s in got] == [
        ("a.png", 5, None), ("b.?", None, read.NO_IMAGE_MEMBER), ("c.?", None, read.NO_IMAGE_MEMBER),
        ("d.JPG", None, None), ("e.?", None, read.NO_IMAGE_MEMBER)]  # fmt: skip
    assert got[0].meta == {"image_id": 5, "annotations": []} and got[0].data == b"A"

    # Detect leaves out the samples without an image; a shard of only those is one error row.
    unit = {"unit": 0, "kind": "tar", "uris": [str(shard)], "image_ids": []}
    rows = list(read.read_unit(unit, None, []))
    assert [(r["uri"], r["image_id"]) for r in rows] == [(f"{shard}#a.png", 5), (f"{shard}#d.JPG", units.derived_image_id(f"{shard}#d.JPG"))]
    shard.write_bytes(_tar([("b.json", b"{}"), ("c.txt", b"label")]))
    rows = list(read.read_unit(unit, None, []))
    assert [(r["uri"], r["error"]) for r in rows] == [(str(shard), "shard holds no images")]


def test_parquet_samples_with_extra_columns_and_missing_ones(tmp_path):
    shard = tmp_path / "s.parquet"
    pq.write_table(pa.table({"file_name": ["a.png", "b.png", "c.png"], "image": [b"A", None, b"C"],
                             "annotations": ["[]", None, '[{"bbox": [1, 2, 3, 4]}]']}), shard)  # fmt: skip
    assert list(read.parquet_samples(str(shard), batch_size=2)) == [("a.png", b"A", None), ("b.png", None, None), ("c.png", b"C", None)]
    samples = list(read.shard_samples(str(shard), "parquet", columns=["annotations"]))
    assert [(s.uri, s.name, s.image_id, s.data, s.error, s.meta) for s in samples] == [
        (f"{shard}#a.png", "a.png", None, b"A", None, {"annotations": "[]"}),
        (f"{shard}#b.png", "b.png", None, None, None, {"annotations": None}),
        (f"{shard}#c.png", "c.png", None, b"C", None, {"annotations": '[{"bbox": [1, 2, 3, 4]}]'}),
    ]
    with pytest.raises(InputError, match=r"lack 'image_id_list' \(see docs/data.md\)"):
        list(read.parquet_samples(str(shard), columns=["image_id_list"]))
    (error,) = read.shard_samples(str(shard), "parquet", columns=["image_id_list"])
    assert (error.uri, error.image_id, error.data) == (str(shard), None, None)
    assert error.error.startswith("shard unreadable: InputError: columns ['annotations', 'file_name', 'image'] lack")
