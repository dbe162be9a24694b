"""The report's numbers against pandas over the committed Parquet of a run with known detections."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from detbatch.detect.sink import read_commit_log
from detbatch.report import data, write_report
from detbatch.report.truth import greedy_match
from tests.report.runs import CATEGORIES, write_known_run


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    return write_known_run(tmp_path_factory.mktemp("report-data"))


def _committed(run: str, table: str) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(f) for f in read_commit_log(run).files(run, table)], ignore_index=True)


def _embedded(html: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)
                      .group(1).replace("<\\/", "</"))


def test_summary_and_gallery_equal_pandas(known, tmp_path):
    result = write_report(known.output, str(tmp_path / "out"), samples=12)
    html = (tmp_path / "out" / "index.html").read_text()
    images, dets = _committed(known.output, "images"), _committed(known.output, "detections")
    assert "debris" not in set(dets["category"])  # the half pair is not committed
    assert re.search(r'id="images-ok">(\d+)<', html).group(1) == str((images["status"] == "ok").sum())
    assert re.search(r'id="images-error">(\d+)<', html).group(1) == str((images["status"] == "error").sum())
    assert re.search(r'id="detections">(\d+)<', html).group(1) == str(len(dets)) == str(known.detections.num_rows)
    shown = dict(re.findall(r'<tr data-category="(\w+)"><td>\w+</td><td class="n">(\d+)</td>', html))
    assert shown == {c: str(n) for c, n in dets["category"].value_counts().items()}
    page = _embedded(html)
    gallery = [im for im in page["images"] if im["sampled"]]
    assert len(gallery) == 12 == result.images_shown and result.thumbnails == 12
    assert {page["categories"][d[5]] for im in gallery for d in im["dets"]} == set(CATEGORIES.values())  # stratified
    for im in gallery:
        expect = dets[dets["image_id"] == im["id"]].sort_values("score")
        got = sorted(im["dets"], key=lambda d: d[4])
        assert [page["categories"][d[5]] for d in got] == expect["category"].tolist()
        np.testing.assert_allclose([d[4] for d in got], expect["score"], atol=1e-4)
        np.testing.assert_allclose([d[:4] for d in got], expect[["x_min", "y_min", "x_max", "y_max"]].to_numpy()
                                   .reshape(-1, 4), atol=0.06)
        row = images[images["image_id"] == im["id"]].iloc[0]
        assert (im["uri"], im["w"], im["h"]) == (row["uri"], row["width"], row["height"])
        assert (tmp_path / "out" / im["thumb"]).stat().st_size > 0


def test_sample_is_deterministic_and_capped(known, tmp_path):
    run = data.open_parts(known.output)
    summary, per_category, any_image = data.scan_summary(run, per_category=5, overall=5)
    first = data.choose_sample(per_category, any_image, 5)
    again = data.choose_sample(*data.scan_summary(run, per_category=5, overall=5)[1:], 5)
    assert first == again and len(first) == 5
    # Fewer images than categories asked: each category still gets its first image.
    few = data.choose_sample(per_category, any_image, 2)
    assert len(per_category) == len(CATEGORIES) and all(int(s.ids[0]) in few for s in per_category)


def test_gallery_reads_only_the_parts_of_sampled_images(known, tmp_path):
    run = data.open_parts(known.output)
    first_part = pd.read_parquet(run.images[0])
    chosen = {int(i): 0 for i in first_part["image_id"][:3]}
    for path in [*run.images[1:], *run.detections[1:]]:  # any read of another part would fail
        (tmp_path / "x").write_bytes(b"")
    broken = data.RunParts(run.uri, run.fs, [run.images[0], str(tmp_path / "x")],
                           [run.detections[0], str(tmp_path / "x")], run.info)
    images, dets = data.read_images_of(broken, chosen)
    assert sorted(images["image_id"].to_pylist()) == sorted(chosen)
    assert set(dets["image_id"].to_pylist()) <= set(chosen)


def test_errors_table_lists_every_bad_input_grouped_by_reason(known, tmp_path):
    write_report(known.output, str(tmp_path / "out"), samples=5)
    html = (tmp_path / "out" / "index.html").read_text()
    assert "Errors (3)" in html
    for uri in known.bad_uris:
        assert f">{uri}</a>" in html
    assert "<h3>…: cannot identify image file (2)</h3>" in html and "<h3>…: file is empty (1)</h3>" in html


def test_ground_truth_colours_and_worst_images(known, tmp_path):
    write_report(known.output, str(tmp_path / "out"), ground_truth=known.ground_truth, evaluation=known.evaluation,
                 samples=8)
    html = (tmp_path / "out" / "index.html").read_text()
    page = _embedded(html)
    # Every detection over 0.6 has its own ground-truth box (TP); the rest are FP unless their box equals one;
    # each image has one more box that nothing finds.
    for im in page["images"]:
        for d in im["dets"]:
            if d[4] > 0.6:
                assert d[6] == 1
        assert sum(g[5] == -1 for g in im["gt"]) >= 1
    assert "Most missed objects" in html and "Highest-scoring false positives" in html
    assert '<td class="n">0.750</td>' in html and (tmp_path / "out" / "pr_curves.png").exists()


def test_greedy_match_takes_each_truth_once_by_score():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    tp, taken = greedy_match(boxes, np.array([1, 1, 1]), np.array([0.3, 0.9, 0.5]),
                             np.array([[0, 0, 10, 10], [0, 0, 9, 9.0]]), np.array([1, 2]))
    assert tp.tolist() == [False, True, False]  # the 0.9 takes it; the other category's box is not a match
    assert taken[0] == pytest.approx(0.9) and np.isnan(taken[1])


def test_samples_below_one_is_refused(known, tmp_path):
    from detbatch.errors import InputError

    with pytest.raises(InputError, match="samples=0"):
        write_report(known.output, str(tmp_path / "out"), samples=0)


def test_report_goes_to_any_fsspec_uri(known):
    from detbatch import storage

    out = "memory://report-test/out"
    write_report(known.output, out, evaluation=known.evaluation, samples=4)
    assert storage.list_names(out) == ["index.html", "pr_curves.png", "thumbs"]
    page = _embedded(storage.read_text(storage.join(out, "index.html")))
    assert sorted(storage.list_names(storage.join(out, "thumbs"))) == sorted(f"{im['id']}.jpg" for im in page["images"])


def test_run_without_detections_or_run_json(tmp_path):
    import pyarrow as pa

    from detbatch.detect import sink
    from detbatch.detect.detector import SCORED_SCHEMA

    rows = [{"unit": 0, "index": i, "last": i == 2, "uri": f"/nowhere/{i}.png", "image_id": i, "width": 8, "height": 8,
             "status": "ok", "error": None, "category_id": [], "category": [], "score": [], "box": []} for i in range(3)]
    sink.write_parts(pa.Table.from_pylist(rows, schema=SCORED_SCHEMA), str(tmp_path / "run"))
    result = write_report(str(tmp_path / "run"), str(tmp_path / "out"), samples=5)
    html = (tmp_path / "out" / "index.html").read_text()
    assert result.images_shown == 3 and result.thumbnails == 0  # the files are gone: boxes on grey
    assert 'id="detections">0<' in html and "No run.json" in html and "No input is in error." in html


def test_ground_truth_pairs_by_file_name_without_a_manifest(known, tmp_path):
    import shutil

    by_id = _embedded(_report_html(known.output, known.ground_truth, tmp_path / "by-id"))
    run = tmp_path / "run"
    shutil.copytree(known.output, run)
    info = json.loads((run / "run.json").read_text())
    info["input"]["manifest"] = None
    (run / "run.json").write_text(json.dumps(info))
    by_name = _embedded(_report_html(str(run), known.ground_truth, tmp_path / "by-name"))
    assert by_name == by_id and all("gt" in im for im in by_id["images"])


def _report_html(run, ground_truth, out) -> str:
    write_report(run, str(out), ground_truth=ground_truth, samples=6)
    return (out / "index.html").read_text()


def test_the_evaluations_pictures_are_copied_and_shown(known, tmp_path):
    """Each picture `detbatch evaluate` writes (curves, thresholds, confusion matrix, error types) is copied
    beside the page and shown; nothing else of the evaluation folder is."""
    import shutil

    from detbatch.report.build import PICTURES
    from tests.report.runs import _png

    evaluation = tmp_path / "evaluation"
    shutil.copytree(known.evaluation, evaluation)
    for name in (*PICTURES, "other.png"):
        _png(evaluation / name, 30, 20, 5)
    write_report(known.output, str(tmp_path / "out"), evaluation=str(evaluation), samples=3)
    html = (tmp_path / "out" / "index.html").read_text()
    assert set(PICTURES) >= {"pr_curves.png", "thresholds.png", "confusion.png", "errors.png"}
    for name in PICTURES:
        assert f'src="{name}"' in html and (tmp_path / "out" / name).read_bytes() == (evaluation / name).read_bytes()
    assert "other.png" not in html and not (tmp_path / "out" / "other.png").exists()
