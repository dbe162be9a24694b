"""``detbatch report`` from the command line."""

from __future__ import annotations

from detbatch.cli import main
from tests.report.runs import write_known_run


def test_report_command_writes_the_page_and_says_where(tmp_path, capsys):
    known = write_known_run(tmp_path / "data", units=(6, 7))
    out = tmp_path / "report"
    assert main(["report", "--detections", known.output, "--out", str(out), "--samples", "4",
                 "--ground-truth", known.ground_truth, "--evaluation", known.evaluation]) == 0
    printed = capsys.readouterr().out
    assert f"open: {out / 'index.html'}" in printed and (out / "index.html").exists()
    assert len(list((out / "thumbs").iterdir())) >= 4


def test_report_of_a_folder_that_is_not_a_run_names_it(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", "--detections", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert f"{tmp_path / 'empty'}: not a detect output" in capsys.readouterr().err
