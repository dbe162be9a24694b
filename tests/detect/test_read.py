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
    no_image = read.NO_IMAGE_MEMBER
    samples = list(read.tar_samples(str(shard)))
    assert samples == [
        read.TarSample("a", "a.png", b"A", {"image_id": 5, "annotations": []}),
        read.TarSample("b", None, None, {}, f"{no_image} (b.json)"),  # not JSON: no metadata, the shard reads on
        read.TarSample("c", None, None, {}, f"{no_image} (c.txt)"),
        read.TarSample("d", "d.JPG", b"D", {}),  # JSON, but not an object
        read.TarSample("e", None, None, {"image_id": "x"}, f"{no_image} (e.json)"),
    ]
    got = list(read.shard_samples(str(shard), "tar"))
    assert [(s.uri.rsplit("#", 1)[1], s.image_id, s.error) for s in got] == [
        ("a.png", 5, None), ("b.?", None, f"{no_image} (b.json)"), ("c.?", None, f"{no_image} (c.txt)"),
        ("d.JPG", None, None), ("e.?", None, f"{no_image} (e.json)")]  # fmt: skip
    assert got[0].meta == {"image_id": 5, "annotations": []} and got[0].data == b"A"

    # Detect records the samples without an image as error rows: the images table accounts for every
    # sample. A shard without a single sample is one error row.
    unit = {"unit": 0, "kind": "tar", "uris": [str(shard)], "image_ids": []}
    rows = list(read.read_unit(unit, None, []))
    assert [(r["uri"].rsplit("#", 1)[1], r["error"]) for r in rows] == [
        ("a.png", None), ("b.?", f"{no_image} (b.json)"), ("c.?", f"{no_image} (c.txt)"), ("d.JPG", None),
        ("e.?", f"{no_image} (e.json)")]  # fmt: skip
    assert [r["image_id"] for r in rows[:2]] == [5, units.derived_image_id(f"{shard}#b.?")]
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4] and rows[-1]["last"]
    shard.write_bytes(_tar([]))
    rows = list(read.read_unit(unit, None, []))
    assert [(r["uri"], r["error"]) for r in rows] == [(str(shard), "shard holds no images")]


def test_tar_image_is_taken_by_its_last_extension(tmp_path):
    shard = tmp_path / "s.tar"
    shard.write_bytes(_tar([
        ("v/frame.0001.jpg", b"F"), ("v/frame.json", b'{"image_id": 3}'),  # key v/frame, suffix 0001.jpg
        ("x.jpg", b"X"), ("x.seg.png", b"mask"),  # the plain KEY.jpg is the image, x.seg.png a field beside it
        ("y.left.jpg", b"L"), ("y.right.jpg", b"R"),  # two images, neither plain: which one is not ours to guess
        ("z.tar.gz", b"?"),
    ]))  # fmt: skip
    got = list(read.shard_samples(str(shard), "tar"))
    assert [(s.uri.rsplit("#", 1)[1], s.name, s.image_id, s.data, s.error) for s in got] == [
        ("v/frame.0001.jpg", "v/frame.0001.jpg", 3, b"F", None),
        ("x.jpg", "x.jpg", None, b"X", None),
        ("y.?", "y", None, None, "several image members (y.left.jpg, y.right.jpg); a sample holds one image"),
        ("z.?", "z", None, None, f"{read.NO_IMAGE_MEMBER} (z.tar.gz)"),
    ]


def test_a_key_that_reappears_is_an_error_row_not_an_overwrite(tmp_path):
    shard = tmp_path / "s.tar"
    shard.write_bytes(_tar([("a.png", b"A1"), ("a.json", b'{"image_id": 1}'), ("b.png", b"B"),
                            ("a.png", b"A2"), ("a.json", b'{"image_id": 2}'), ("a.jpg", b"A3")]))  # fmt: skip
    unit = {"unit": 0, "kind": "tar", "uris": [str(shard)], "image_ids": []}
    rows = list(read.read_unit(unit, None, []))
    assert [(r["uri"].rsplit("#", 1)[1], r["image_id"], r["data"]) for r in rows] == [
        ("a.png", 1, b"A1"), ("b.png", units.derived_image_id(f"{shard}#b.png"), b"B"),
        ("a@1", units.derived_image_id(f"{shard}#a@1"), None)]  # fmt: skip
    assert rows[2]["error"] == ("key 'a' repeats after other keys (a.png, a.json, a.jpg); a sample's members "
                                "must be consecutive, and keys unique in a shard")
    assert list(read.read_unit(unit, None, [])) == rows  # same shard, same rows


def test_tar_members_over_max_bytes_are_refused_from_their_header(tmp_path, monkeypatch):
    shard = tmp_path / "s.tar"
    shard.write_bytes(_tar([("a.png", b"A" * 100), ("a.json", b'{"image_id": 1}'), ("b.png", b"B" * 10),
                            ("b.json", b'{"file_name": "' + b"n" * 200 + b'"}'), ("c.png", b"C" * 10), ("c.txt", b"t" * 500)]))  # fmt: skip
    got = [(s.uri.rsplit("#", 1)[1], s.image_id, s.data, s.error) for s in read.shard_samples(str(shard), "tar", max_bytes=50)]
    assert got == [
        ("a.png", 1, None, "image member a.png of 100 bytes exceeds input.max_bytes=50"),
        ("b.png", None, None, "metadata member b.json of 217 bytes exceeds input.max_bytes=50"),
        ("c.png", None, b"C" * 10, None),  # c.txt is over too, but never read: not an image, not metadata
    ]
    read_sizes = []
    real_extract = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, m: read_sizes.append(m.size) or real_extract(self, m))
    list(read.tar_samples(str(shard), max_bytes=50))
    assert read_sizes == [15, 10, 10]  # a.json, b.png, c.png: nothing over the cap is read, nor c.txt


def test_read_file_refuses_a_file_over_max_bytes(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    size = len(png_bytes())
    assert read.read_file(str(tmp_path / "a.png"), max_bytes=size) == (png_bytes(), None)
    error = f"file of {size} bytes exceeds input.max_bytes={size - 1}"
    assert read.read_file(str(tmp_path / "a.png"), max_bytes=size - 1) == (None, error)  # no size given: once read
    # With the listing's size it is refused unread (a missing file would say "not found" otherwise).
    assert read.read_file(str(tmp_path / "gone.png"), max_bytes=10, size=11) == (None, "file of 11 bytes exceeds input.max_bytes=10")
    assert units.listed_size("1234:abc") == 1234 and units.listed_size("None:") == -1


def test_read_unit_takes_file_sizes_from_the_listing(image_dir):
    listing = units.list_input(str(image_dir))
    (unit,) = units.plan_units(listing, 10, None)
    assert unit["sizes"] == [(image_dir / name).stat().st_size for name in ("a.png", "b.png", "sub/c.PNG")]
    (image_dir / "a.png").unlink()  # the listing's size refuses it before any read
    rows = list(read.read_unit(unit, None, [], max_bytes=min(unit["sizes"]) - 1))
    assert all(r["data"] is None and "exceeds input.max_bytes=" in r["error"] for r in rows)
    rows = list(read.read_unit({**unit, "sizes": [-1] * 3}, None, [], max_bytes=10**9))
    assert "not found" in rows[0]["error"] and rows[1]["data"] == (image_dir / "b.png").read_bytes()


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


def _read_rows(shard, **kwargs) -> list[dict]:
    unit = {"unit": 0, "kind": "parquet", "uris": [str(shard)], "image_ids": []}
    rows = list(read.read_unit(unit, None, [], **kwargs))
    pa.Table.from_pylist(rows, schema=read.READ_SCHEMA)  # what the read stage builds of them
    return rows


def test_parquet_hugging_face_image_structs(tmp_path):
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array([{"bytes": png_bytes(), "path": "x/a.png"}, {"bytes": b"B", "path": None}, None], struct)
    shard = tmp_path / "hf.parquet"
    pq.write_table(pa.table({"image": images, "label": [1, 2, 3]}), shard, row_group_size=2)
    rows = _read_rows(shard)
    assert [(r["uri"], r["data"], r["error"]) for r in rows] == [
        (f"{shard}#x/a.png", png_bytes(), None),  # path names the image when there is no file_name
        (f"{shard}#row-1", b"B", None),  # no name at all: its row in the file
        (f"{shard}#row-2", None, None)]  # fmt: skip
    assert rows[0]["image_id"] == units.derived_image_id(f"{shard}#x/a.png")
    named = tmp_path / "named.parquet"
    pq.write_table(pa.table({"file_name": ["n.png"], "image": images[:1], "image_id": [4]}), named)
    assert [(r["uri"], r["image_id"], r["data"]) for r in _read_rows(named)] == [(f"{named}#n.png", 4, png_bytes())]
    big = _read_rows(shard, max_bytes=10)
    assert big[0]["data"] is None and big[0]["error"] == f"image of {len(png_bytes())} bytes exceeds input.max_bytes=10"
    assert big[1]["data"] == b"B" and big[1]["error"] is None


@pytest.mark.parametrize("columns", [
    {"file_name": ["a.png"], "image": ["not bytes"]},
    {"file_name": [1], "image": [b"A"]},
    {"image": [b"A"]},  # no name for the image
    {"file_name": ["a.png"], "image": [{"data": b"A"}]},  # a struct without bytes
    {"file_name": ["a.png"], "image": [b"A"], "image_id": ["one"]},
    {"name": ["a.png"], "picture": [b"A"]},
])  # fmt: skip
def test_parquet_of_another_layout_is_one_error_row_naming_it(tmp_path, columns):
    shard = tmp_path / "s.parquet"
    pq.write_table(pa.table(columns), shard)
    (row,) = _read_rows(shard)
    assert row["uri"] == str(shard) and row["data"] is None and row["last"]
    found = ", ".join(f"{f.name}: {f.type}" for f in pq.read_schema(shard))
    assert row["error"] == (f"shard unreadable: InputError: columns {{{found}}} are not a shard layout; "
                            f"expected {read.PARQUET_LAYOUTS} (see docs/data.md)")
