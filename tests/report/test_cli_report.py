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


def test_report_reads_yolo_ground_truth_with_its_images_and_names(tmp_path):
    """The same ground truth as YOLO labels (converted from the COCO JSON, with their images folder and
    data.yaml given by flag) colours the same boxes as the COCO JSON (both paired by file name)."""
    import json
    import re
    import shutil

    from detbatch.datasets.convert import convert

    known = write_known_run(tmp_path / "data", units=(6, 7))
    run = tmp_path / "run"  # paired by file name: YOLO numbers its images itself, the manifest's ids are not its
    shutil.copytree(known.output, run)
    info = json.loads((run / "run.json").read_text())
    info["input"]["manifest"] = None
    (run / "run.json").write_text(json.dumps(info))
    images = str(tmp_path / "data" / "in")
    convert(known.ground_truth, str(tmp_path / "yolo"), "yolo", images=images)

    def embedded(out, *flags):
        assert main(["report", "--detections", str(run), "--out", str(out), "--samples", "6", *flags]) == 0
        html = (out / "index.html").read_text()
        page = json.loads(re.search(r'id="report-data">(.*?)</script>', html, re.S).group(1).replace("<\\/", "</"))
        return {im["uri"]: im["gt"] for im in page["images"]}

    coco = embedded(tmp_path / "r-coco", "--ground-truth", known.ground_truth)
    yolo = embedded(tmp_path / "r-yolo", "--ground-truth", str(tmp_path / "yolo" / "labels"), "--annotations-format",
                    "yolo", "--images", images, "--names", str(tmp_path / "yolo" / "data.yaml"))
    assert coco and yolo == coco and any(coco.values())
