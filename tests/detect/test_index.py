"""An index as input (detbatch.detect.index): detection by columns, row counts, row ranges, read_unit over
an index unit. No Ray: row counts are taken in the driver's process when Ray is not up."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from detbatch.detect import index, plan, read, units
from detbatch.errors import InputError
from tests.helpers.images import png_bytes


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for i in range(5):
        (root / f"{i}.png").write_bytes(png_bytes())
    return root


def _write(path, kind, rows, row_group_size=2):
    if kind == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    elif kind == "csv":
        keys = list(rows[0])
        path.write_text("\n".join([",".join(keys)] + [",".join("" if r[k] is None else str(r[k]) for k in keys)
                                                     for r in rows]) + "\n")
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")


@pytest.mark.parametrize("kind, ext", [("parquet", "parquet"), ("csv", "csv"), ("jsonl", "jsonl")])
def test_an_index_is_listed_planned_and_read_in_ranges(tmp_path, images, kind, ext):
    folder = tmp_path / "index"
    folder.mkdir()
    # Relative uris are below the index file's folder; an absolute one is used as it is.
    rows = [{"uri": f"../images/{i}.png", "image_id": 100 + i} for i in range(4)] + \
           [{"uri": str(images / "4.png"), "image_id": 104}]
    _write(folder / f"a.{ext}", kind, rows[:3])
    _write(folder / f"b.{ext}", kind, rows[3:])

    listing = units.list_input(str(folder))  # auto: a uri column and no image column
    assert listing.kind == "index" and [u.rsplit("/", 1)[-1] for u in listing.uris] == [f"a.{ext}", f"b.{ext}"]
    planned = units.plan_units(listing, 2, None)
    assert [(u["uris"][0][-len(ext) - 2:], u["start"], u["stop"]) for u in planned] == [
        (f"a.{ext}", 0, 2), (f"a.{ext}", 2, 3), (f"b.{ext}", 0, 2)]
    assert [u["unit"] for u in planned] == [0, 1, 2]
    # The plan: one row per index file, cut into those units (numbered across the files) by the stream.
    rows = list(units.plan_rows(listing, 2, None))
    assert [(r["unit"], r["start"], r["stop"], r["step"]) for r in rows] == [(0, 0, 3, 2), (2, 0, 2, 2)]
    assert [u for r in rows for u in units.index_units(r)] == [{**u, "step": -1} for u in planned]
    ids, row_of = plan.unit_ids(plan.plan_table(rows, listing.summary()))
    assert ids.tolist() == [0, 1, 2] and row_of.tolist() == [0, 0, 1]

    read_rows = [r for u in planned for r in read.read_unit(u, None, [])]
    assert [r["image_id"] for r in read_rows] == [100, 101, 102, 103, 104]
    assert [r["index"] for r in read_rows] == [0, 1, 0, 0, 1] and [r["last"] for r in read_rows] == [False, True, True, False, True]
    assert all(r["error"] is None and r["data"] == png_bytes() for r in read_rows)
    assert read_rows[0]["uri"].endswith("/index/../images/0.png")


def test_a_parquet_range_reads_only_its_row_groups(tmp_path):
    path = tmp_path / "i.parquet"
    _write(path, "parquet", [{"uri": f"/x/{i}.png"} for i in range(10)], row_group_size=3)
    assert index.index_rows(str(path)) == 10
    assert [u for u, _ in index.index_range(str(path), 2, 8)] == [f"/x/{i}.png" for i in range(2, 8)]
    assert [u for u, _ in index.index_range(str(path), 9, 10)] == ["/x/9.png"]


def test_index_rows_without_uri_or_with_a_bad_id_are_error_rows(tmp_path, images):
    path = tmp_path / "i.jsonl"
    _write(path, "jsonl", [{"uri": str(images / "0.png")}, {"uri": None}, {"uri": str(images / "1.png"), "image_id": "x"},
                           {"uri": str(tmp_path / "gone.png")}])
    unit = {"unit": 0, "kind": "index", "uris": [str(path)], "image_ids": [], "start": 0, "stop": 4}
    rows = list(read.read_unit(unit, None, []))
    assert rows[0]["error"] is None and rows[0]["image_id"] == units.derived_image_id(str(images / "0.png"))
    assert rows[1]["uri"] == f"{path}#row-1" and rows[1]["error"] == "index row 1 has no uri"
    assert rows[2]["error"] == "index row 2: image_id 'x' is not an integer"
    assert "file not found" in rows[3]["error"]


def test_a_parquet_shard_of_images_is_not_an_index_unless_forced(tmp_path):
    shard = tmp_path / "s.parquet"
    pq.write_table(pa.table({"file_name": ["a.png"], "image": [png_bytes()], "uri": ["x"]}), shard)
    assert units.list_input(str(tmp_path)).kind == "parquet"  # it has an image column
    assert units.list_input(str(tmp_path), "index").kind == "index"


def test_an_index_without_a_uri_column_is_refused_naming_its_columns(tmp_path):
    path = tmp_path / "i.csv"
    path.write_text("path,image_id\na.png,1\n")
    listing = units.list_input(str(path))
    assert listing.kind == "index"
    with pytest.raises(InputError, match=r"i.csv has columns \['image_id', 'path'\] but no 'uri'"):
        units.plan_units(listing, 2, None)
