"""The persisted plan (detbatch.detect.plan): written once by the first run, read by a rerun instead of
listing the input (locally and on S3), and compared with a new listing under --verify-input."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from detbatch import storage
from detbatch.detect import driver, plan, sink, units
from detbatch.detect.driver import run_detect
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

    monkeypatch.setattr(plan, "list_input", refuse)  # where the listing is made (plan.listing_or_plan)
    monkeypatch.setattr(driver, "plan_rows", refuse)


def test_plan_round_trip_and_changes(image_dir, tmp_path):
    listing = units.list_input(str(image_dir))
    table = plan.plan_table(units.unit_rows(listing, 2, None), listing, listing.summary())
    out = str(tmp_path / "out")
    plan.write_plan(out, table, listing)
    read, summary = plan.read_plan(out)
    assert read.equals(table) and summary == listing.summary()
    assert read.column("sizes").to_pylist() == [[len((image_dir / "a.png").read_bytes())] * 2, [len((image_dir / "sub/c.PNG").read_bytes())]]
    assert plan.input_changes(plan.read_listing(out), listing) == ""
    (image_dir / "a.png").write_bytes(b"other bytes")
    (image_dir / "b.png").unlink()
    (image_dir / "d.png").write_bytes(b"new")
    changes = plan.input_changes(plan.read_listing(out), units.list_input(str(image_dir)))
    assert changes == (f"1 added ({image_dir}/d.png); 1 removed ({image_dir}/b.png); "
                       f"1 replaced ({image_dir}/a.png)")


def test_a_rerun_resumes_from_the_plan_without_listing(store, clean, monkeypatch):
    """The clean run wrote its plan; an interrupted copy of it (run.json and one unit's parts gone) is
    finished from the plan alone, and --verify-input refuses an input that lists differently."""
    out = store.output("plan-resume")
    copy_tree(clean.output, out, keep=lambda name: name != "run.json" and not name.rsplit("/", 1)[-1].startswith("00000003-"))
    stored, summary = plan.read_plan(out)
    assert stored.num_rows == 8 and summary.num_inputs == NUM_INPUTS and summary.kind == "images"
    assert 3 not in sink.read_commit_log(out).finished

    _no_listing(monkeypatch)
    resumed = run_detect(detect_config(store, out))
    assert (resumed.images_processed, resumed.images_resumed) == (2, NUM_INPUTS - 2)
    assert_same_as_clean(out, clean)
    check_invariants(out)
    monkeypatch.undo()

    # The same files less one, one more: --verify-input lists again and names both.
    real = units.list_input(store.input)
    gone, added = real.uris[0], storage.join(store.input, "zz-new.png")
    changed = dataclasses.replace(real, uris=(*real.uris[1:], added), versions=(*real.versions[1:], "9:x"))
    monkeypatch.setattr(plan, "list_input", lambda *a, **k: changed)
    with pytest.raises(InputError, match=rf"--verify-input: .* changed since .*: 1 added \({added}\); "
                                         rf"1 removed \({gone}\); use another --output, or --overwrite"):
        run_detect(detect_config(store, out, **{"input.verify": True}))
    monkeypatch.setattr(plan, "list_input", lambda *a, **k: real)
    assert run_detect(detect_config(store, out, **{"input.verify": True})).already_complete


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
    stored, summary = plan.read_plan(out)
    assert summary.kind == "index" and summary.num_inputs == 1
    assert stored.select(["unit", "start", "stop", "step"]).to_pylist() == [{"unit": 0, "start": 0, "stop": 3, "step": 2}]
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

