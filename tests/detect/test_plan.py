"""The persisted plan (detbatch.detect.plan): written once by the first run, read by a rerun instead of
listing the input (locally and on S3), and compared with a new listing under --verify-input."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from detbatch import storage
from detbatch.detect import plan, read, sink, units
from detbatch.detect.driver import run_detect
from detbatch.detect.output import LISTING_DIR, VERIFY_DIR
from detbatch.errors import InputError
from tests.helpers.exactly_once import (
    NUM_INPUTS,
    assert_same_as_clean,
    check_invariants,
    copy_tree,
    detect_config,
    read_tables,
)


def _no_listing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the input was listed (or planned) again")

    monkeypatch.setattr(plan, "gather", refuse)  # where the listing is made (plan.list_into)
    monkeypatch.setattr(plan, "plan_table", refuse)


def _listed_config(input_uri: str, out: str):
    from detbatch.config import load_config
    from detbatch.detect.config import DetectConfig

    return load_config(DetectConfig, None, {"input.uri": input_uri, "output.uri": out})


def test_plan_round_trip_and_changes(image_dir, tmp_path):
    out = str(tmp_path / "out")
    config = _listed_config(str(image_dir), out)
    listed = plan.list_into(config, LISTING_DIR, None)
    names = [n for n, _ in listed.parts]
    assert [n for _, n in listed.parts] == [3] and all(n.startswith(LISTING_DIR + "/part-") for n in names)
    table = plan.plan_table(plan.part_rows(listed.parts, 2), listed.summary, names)
    plan.write_plan(out, table)
    stored = plan.read_plan(out)
    assert stored.table.equals(table) and stored.summary == listed.summary and stored.listing == names
    assert stored.summary == units.list_input(str(image_dir)).summary()  # the in-memory listing's digests
    assert plan.unit_ids(table)[0].tolist() == [0, 1]
    size = len((image_dir / "a.png").read_bytes())
    row = {**stored.table.to_pylist()[0], "uris": [storage.join(out, names[0])]}
    cut = list(units.index_units(row))
    assert [(u["unit"], u["start"], u["stop"]) for u in cut] == [(0, 0, 2), (1, 2, 3)]
    assert [Path(r["uri"]).name for u in cut for r in read.read_unit(u, None, [])] == ["a.png", "b.png", "c.PNG"]
    same = plan.list_into(config, VERIFY_DIR, None)
    assert plan.input_changes(plan.listed_files(out, names), plan.listed_files(out, [n for n, _ in same.parts])) == ""
    (image_dir / "a.png").write_bytes(b"other bytes")
    (image_dir / "b.png").unlink()
    (image_dir / "d.png").write_bytes(b"new")
    now = plan.list_into(config, VERIFY_DIR, None)  # the folder emptied first
    assert len(storage.list_names(storage.join(out, VERIFY_DIR))) == 1
    changes = plan.input_changes(plan.listed_files(out, names), plan.listed_files(out, [n for n, _ in now.parts]))
    assert changes == (f"1 added ({image_dir}/d.png); 1 removed ({image_dir}/b.png); "
                       f"1 replaced ({image_dir}/a.png)")
    # The listed sizes go with the files: one over max_bytes is refused unread (b.png is gone: no "not found").
    refused = list(read.read_unit(cut[0], None, [], max_bytes=size - 1))
    assert [r["error"] for r in refused] == [f"file of {size} bytes exceeds input.max_bytes={size - 1}"] * 2


def test_input_changes_is_a_merge_of_two_sorted_listings():
    then = [(f"s3://b/{i:03d}.png", "1:x") for i in range(0, 100, 2)]
    now = [(u, "2:y" if u.endswith("010.png") else v) for u, v in then if not u.endswith(("000.png", "004.png"))]
    now += [("s3://b/999.png", "1:x")] + [(f"s3://b/{i:03d}.png", "1:x") for i in range(1, 9, 2)]
    assert plan.input_changes(iter(then), iter(sorted(now))) == (
        "5 added (s3://b/001.png, s3://b/003.png, s3://b/005.png, ... 2 more); "
        "2 removed (s3://b/000.png, s3://b/004.png); 1 replaced (s3://b/010.png)")


def test_a_rerun_resumes_from_the_plan_without_listing(store, clean, monkeypatch):
    """The clean run wrote its plan; an interrupted copy of it (run.json and one unit's parts gone) is
    finished from the plan alone, and --verify-input refuses an input that lists differently."""
    out = store.output("plan-resume")
    copy_tree(clean.output, out, keep=lambda name: name != "run.json" and not name.rsplit("/", 1)[-1].startswith("00000003-"))
    stored = plan.read_plan(out)
    assert stored.summary.num_inputs == NUM_INPUTS and stored.summary.kind == "images"
    assert stored.table.num_rows == 1 and plan.unit_ids(stored.table)[0].tolist() == list(range(8))  # one part
    assert 3 not in sink.read_commit_log(out).finished

    _no_listing(monkeypatch)
    resumed = run_detect(detect_config(store, out))
    assert (resumed.images_processed, resumed.images_resumed) == (2, NUM_INPUTS - 2)
    assert_same_as_clean(out, clean)
    check_invariants(out)
    monkeypatch.undo()

    # The same files less one, one more (the shared input is never changed: the listing is, as written):
    # --verify-input lists again and names both, and leaves nothing of its listing behind.
    real = units.list_input(store.input)
    gone, added = real.uris[0], storage.join(store.input, "zz-new.png")
    monkeypatch.setattr(plan, "gather", _changed_gather(drop=gone, add=added))
    with pytest.raises(InputError, match=rf"--verify-input: .* changed since .*: 1 added \({added}\); "
                                         rf"1 removed \({gone}\); use another --output, or --overwrite"):
        run_detect(detect_config(store, out, **{"input.verify": True}))
    assert storage.list_names(storage.join(out, VERIFY_DIR)) == []
    monkeypatch.undo()
    assert run_detect(detect_config(store, out, **{"input.verify": True})).already_complete
    check_invariants(out)


def _changed_gather(drop: str, add: str):
    """plan.gather, its listing then rewritten without ``drop`` and with ``add`` (at the end: it sorts last)."""
    from detbatch.detect import listing

    def gather(shape, job, parallel=None):
        listed = units.gather(shape, job, parallel)
        rows = [r for name, _ in listed.parts for r in listing.read_part(storage.join(job.parts, name)).to_pylist()]
        storage.remove([storage.join(job.parts, name) for name, _ in listed.parts])
        rows = [r for r in rows if r["uri"] != drop] + [{"uri": add, "version": "9:x", "size": 9, "image_id": 1}]
        listed.parts = [listing.write_part(job.parts, rows)]
        listed.names = units.names_sum(r["uri"] for r in rows)
        listed.contents = units.names_sum(f"{r['uri']}\0{r['version']}" for r in rows)
        return listed

    return gather


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_large_run_cuts_its_units_in_a_task_of_the_stream(store, clean, monkeypatch):
    """Past stream.DRIVER_UNITS units left, the plan's rows are cut into units by a task of the stream,
    which reads each unit's files from the listing part: the same rows as the clean run's."""
    from detbatch.detect import stream

    if store.kind != "local":
        pytest.skip("one storage is enough: the parts are read through the same storage calls as on S3")
    monkeypatch.setattr(stream, "DRIVER_UNITS", 0)
    out = store.output("task-cut")
    plans = _Lines()
    logging.getLogger("ray.data").addHandler(plans)  # Ray Data's own loggers do not propagate
    try:
        summary = run_detect(detect_config(store, out))
    finally:
        logging.getLogger("ray.data").removeHandler(plans)
    assert any("Execution plan" in line and "MapBatches(_units_stage)" in line for line in plans.lines)
    assert summary.images_processed == NUM_INPUTS
    assert_same_as_clean(out, clean)
    check_invariants(out)


def test_an_index_runs_like_its_files_and_resumes_from_its_plan(store, clean, tmp_path, monkeypatch):
    """An index (CSV) of 3 of the shared input's files gives the clean run's rows for them (the same uris,
    so the same derived ids); its plan is one row for the index file, cut into units of 2 rows by the
    stream; a rerun reads the plan, and one that lost a unit of that file redoes that unit alone; a
    rewritten index is refused by --verify-input."""
    if store.kind != "local":
        pytest.skip("one storage is enough for the index end to end; S3 reads go through the same read_file")
    files = units.list_input(store.input)
    index = tmp_path / "index" / "images.csv"
    index.parent.mkdir()
    chosen = list(files.uris[6:9])  # the corrupt file among them (an error row)
    pacsv.write_csv(pa.table({"uri": chosen}), index)
    out = store.output("index")
    config = detect_config(store, out, **{"input.uri": str(index.parent)})
    first = run_detect(config)
    assert (first.images_processed, first.images_resumed) == (3, 0)
    images, detections = read_tables(out)
    expected = clean.images[clean.images.uri.isin(chosen)].reset_index(drop=True)
    pd.testing.assert_frame_equal(images, expected)
    expected = clean.detections[clean.detections.uri.isin(chosen)].reset_index(drop=True)
    pd.testing.assert_frame_equal(detections, expected, check_exact=False, rtol=1e-5)
    assert (expected.uri.nunique(), (images.status == "error").sum()) == (2, 1)
    check_invariants(out, num_inputs=3)
    stored = plan.read_plan(out)
    assert stored.summary.kind == "index" and stored.summary.num_inputs == 1
    assert stored.table.select(["unit", "start", "stop", "step"]).to_pylist() == [{"unit": 0, "start": 0, "stop": 3, "step": 2}]
    assert sorted(sink.read_commit_log(out).finished) == [0, 1]

    _no_listing(monkeypatch)
    assert run_detect(config).already_complete
    # Unit 1 (the file's row 2) lost with run.json: the rerun reads only that unit's range.
    lost = store.output("index-lost")
    copy_tree(out, lost, keep=lambda name: name != "run.json" and not name.rsplit("/", 1)[-1].startswith("00000001-"))
    resumed = run_detect(detect_config(store, lost, **{"input.uri": str(index.parent)}))
    assert (resumed.images_processed, resumed.images_resumed) == (1, 2)
    assert read_tables(lost)[0].equals(images)
    check_invariants(lost, num_inputs=3)
    monkeypatch.undo()

    with index.open("a") as f:
        f.write(f"{files.uris[0]}\n")
    verify = detect_config(store, out, **{"input.uri": str(index.parent), "input.verify": True})
    with pytest.raises(InputError, match=rf"1 replaced \({index}\)"):
        run_detect(verify)



def test_a_part_is_planned_in_rows_of_16_units_each_reading_its_own_row_groups(tmp_path, monkeypatch):
    """40 files in units of 2: plan rows of units 0-15 and 16-19 of the one part; a row's units are read
    from the part's row groups that hold them (the part written in groups of 8 files)."""
    import pyarrow.parquet as pq

    from detbatch.detect import listing

    images = tmp_path / "images"
    images.mkdir()
    for i in range(40):
        (images / f"{i:03d}.png").write_bytes(b"x" * (i + 1))
    monkeypatch.setattr(listing, "PART_ROW_GROUP", 8)
    out = str(tmp_path / "out")
    listed = plan.list_into(_listed_config(str(images), out), LISTING_DIR, None)
    (name, rows), = listed.parts
    assert rows == 40 and pq.ParquetFile(storage.join(out, name)).metadata.num_row_groups == 5
    table = plan.plan_table(plan.part_rows(listed.parts, 2), listed.summary, [name])
    assert table.select(["unit", "start", "stop", "step"]).to_pylist() == [
        {"unit": 0, "start": 0, "stop": 32, "step": 2}, {"unit": 16, "start": 32, "stop": 40, "step": 2}]
    assert plan.unit_ids(table)[0].tolist() == list(range(20))
    last = list(units.index_units({**table.to_pylist()[1], "uris": [storage.join(out, name)]}))
    assert [(u["unit"], u["start"], u["stop"]) for u in last] == [(16 + k, 32 + 2 * k, 34 + 2 * k) for k in range(4)]
    read_rows = [r for u in last for r in read.read_unit(u, None, [])]
    assert [Path(r["uri"]).name for r in read_rows] == [f"{i:03d}.png" for i in range(32, 40)]
    assert [r["image_id"] for r in read_rows] == [units.derived_image_id(r["uri"]) for r in read_rows]
    assert [r["data"] for r in read_rows] == [b"x" * (i + 1) for i in range(32, 40)]


def test_an_index_file_is_planned_in_rows_of_16_units(tmp_path):
    index = tmp_path / "index"
    index.mkdir()
    pacsv.write_csv(pa.table({"uri": [f"/x/{i}.png" for i in range(40)]}), index / "a.csv")
    listing = units.list_input(str(index))
    rows = [(r["unit"], r["start"], r["stop"]) for r in units.plan_rows(listing, 2, None)]
    assert rows == [(0, 0, 32), (16, 32, 40)]
