"""detbatch.evaluate end to end: detect-style outputs on local disk and S3, locally and on Ray."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detbatch import storage
from detbatch.evaluate import EvaluateConfig, run_evaluate, summary_lines
from detbatch.metrics import STAT_KEYS, Detections
from detbatch.storage import StorageError

from tests.helpers.detect_output import write_detect_output
from tests.helpers.oracle import adversarial_coco, per_category_ap, pycocotools_eval

REPO = Path(__file__).resolve().parents[2]


def _setup(root: str, data_seed: int = 3, files: int = 3, manifest: bool = True, **kw):
    """Ground truth at ``root/gt.json`` and a detect output at ``root/run``; ``kw`` go to
    :func:`write_detect_output` (``seed`` deals the rows into files, ``row_group_size``)."""
    dataset, dt = adversarial_coco(data_seed)
    gt_uri = storage.join(root, "gt.json")
    storage.write_text(gt_uri, json.dumps(dataset))
    images = [{"image_id": im["id"], "uri": f"s3://data/images/{im['file_name']}"} for im in dataset["images"]]
    run = storage.join(root, "run")
    write_detect_output(run, dt, images, input_uri="s3://data/images", manifest=gt_uri if manifest else None, files=files, **kw)
    return dataset, dt, gt_uri, run


def _assert_equals_pycocotools(metrics, dataset, dt):
    ev = pycocotools_eval(dataset, dt)
    np.testing.assert_allclose([metrics[k] for k in STAT_KEYS], ev.stats, rtol=0, atol=1e-9)
    names = {c["id"]: c["name"] for c in dataset["categories"]}
    for cat, ap in per_category_ap(ev).items():
        assert metrics["per_category"][names[cat]]["AP"] == pytest.approx(ap, abs=1e-9)


def _without_execution(metrics):
    return {k: v for k, v in metrics.items() if k != "execution"}


def test_local_run_equals_pycocotools_and_writes_outputs(tmp_path):
    dataset, dt, gt_uri, run = _setup(str(tmp_path))
    out = tmp_path / "eval"
    metrics = run_evaluate(EvaluateConfig(detections=run, ground_truth=gt_uri, out=str(out)))
    _assert_equals_pycocotools(metrics, dataset, dt)
    assert metrics["execution"]["engine"] == "local"
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert (out / "pr_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert summary_lines(metrics)[0] in report
    pairing = metrics["pairing"]
    known_category = np.isin(dt.category_id, [c["id"] for c in dataset["categories"]])
    assert pairing["mode"] == "image_id"
    assert pairing["detections"] == len(dt)
    assert pairing["detections_unpaired"] == 1  # adversarial_coco adds one on an unknown image
    assert pairing["detections_unknown_category"] == int((~known_category).sum())
    assert pairing["detections_evaluated"] == len(dt) - 1 - int((~known_category).sum())
    assert pairing["gt_images_paired"] == pairing["gt_images"] == len(dataset["images"])


def test_summary_lines_have_pycocotools_format(tmp_path):
    _, _, gt_uri, run = _setup(str(tmp_path))
    lines = summary_lines(run_evaluate(EvaluateConfig(detections=run, ground_truth=gt_uri, out=str(tmp_path / "e"))))
    assert len(lines) == 12
    assert lines[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.")
    assert lines[11].startswith(" Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ] = 0.")


def test_voc_metric(tmp_path):
    _, _, gt_uri, run = _setup(str(tmp_path))
    metrics = run_evaluate(EvaluateConfig(detections=run, ground_truth=gt_uri, out=str(tmp_path / "e"), metric="voc"))
    assert metrics["metric"] == "voc" and 0 < metrics["mAP"] < 1
    assert set(next(iter(metrics["per_category"].values()))) == {"category_id", "AP", "AP_11point", "num_gt", "num_detections"}
    assert len(summary_lines(metrics)) == 2


def test_result_does_not_depend_on_files_row_groups_or_row_order(tmp_path):
    results = set()
    for i, (files, row_group_size) in enumerate([(1, None), (7, 5), (23, 3)]):
        _, _, gt_uri, run = _setup(str(tmp_path / str(i)), files=files, seed=i, row_group_size=row_group_size)
        metrics = run_evaluate(EvaluateConfig(detections=run, ground_truth=gt_uri, out=str(tmp_path / f"e{i}")))
        results.add(json.dumps(_without_execution(metrics) | {"inputs": None}, sort_keys=True))
    assert len(results) == 1


def _uri_hash(uri: str) -> int:
    return int.from_bytes(hashlib.blake2b(uri.encode(), digest_size=8).digest(), "little") >> 1


def test_file_name_pairing(tmp_path):
    """Without a manifest, run images pair by name relative to the input root, then by unique basename."""
    dataset, dt = adversarial_coco(4)
    files = [im["file_name"] for im in dataset["images"]]
    dataset["images"][0]["file_name"] = "train/" + files[0]  # run has it at the root: basename match
    root = "s3://data/in"
    uris = [f"{root}/{f}" for f in files]
    uris[1] = f"{root}/shard-0.tar#{files[1]}"  # shard member: its name is the part after '#'
    uris[2] = f"{root}/shard-1.tar#{files[3]}"  # the same member name as image 3: ambiguous, both unpaired
    run_ids = [_uri_hash(u) for u in uris]
    gt_to_run = {im["id"]: rid for im, rid in zip(dataset["images"], run_ids)}
    known = np.isin(dt.image_id, list(gt_to_run))
    run_dt = Detections(np.array([gt_to_run.get(int(i), 7) for i in dt.image_id]), dt.category_id, dt.score, dt.boxes)
    images = [{"image_id": rid, "uri": u} for rid, u in zip(run_ids, uris)] + [{"image_id": 7, "uri": f"{root}/extra.jpg"}]
    gt_uri = str(tmp_path / "gt.json")
    Path(gt_uri).write_text(json.dumps(dataset))
    write_detect_output(str(tmp_path / "run"), run_dt, images, input_uri=root, manifest=None)

    metrics = run_evaluate(EvaluateConfig(detections=str(tmp_path / "run"), ground_truth=gt_uri, out=str(tmp_path / "e")))
    pairing = metrics["pairing"]
    assert pairing["mode"] == "file_name"
    assert (pairing["paired_by_basename"], pairing["ambiguous_names"]) == (1, 2)
    assert pairing["run_images_unpaired"] == 3 and pairing["gt_images_unpaired"] == 2
    ids = [im["id"] for im in dataset["images"]]
    evaluated = known & ~np.isin(dt.image_id, [ids[2], ids[3]])
    _assert_equals_pycocotools(metrics, dataset, dt.take(evaluated))
    assert pairing["detections_unpaired"] == int((~evaluated).sum())


def test_coco128_file_name_pairing(tmp_path, coco128):
    dataset = json.loads((coco128 / "annotations" / "instances.json").read_text())
    rng = np.random.default_rng(0)
    rows = []
    for a in dataset["annotations"]:
        x, y, w, h = a["bbox"]
        for _ in range(rng.integers(0, 3)):
            j = rng.normal(0, 0.1, 4) * [w, h, w, h]
            rows.append((a["image_id"], a["category_id"], rng.random(), [x + j[0], y + j[1], x + w + j[2], y + h + j[3]]))
    dt = Detections(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), np.array([r[2] for r in rows], np.float32), np.array([r[3] for r in rows], np.float32))
    root = str(coco128 / "images")
    run_id = {im["id"]: _uri_hash(f"{root}/{im['file_name']}") for im in dataset["images"]}
    run_dt = Detections(np.array([run_id[int(i)] for i in dt.image_id]), dt.category_id, dt.score, dt.boxes)
    images = [{"image_id": run_id[im["id"]], "uri": f"{root}/{im['file_name']}"} for im in dataset["images"]]
    write_detect_output(str(tmp_path / "run"), run_dt, images, input_uri=root, manifest=None, files=4)
    gt = str(coco128 / "annotations" / "instances.json")
    metrics = run_evaluate(EvaluateConfig(detections=str(tmp_path / "run"), ground_truth=gt, out=str(tmp_path / "e")))
    assert metrics["pairing"]["paired_by_exact_name"] == len(dataset["images"])
    _assert_equals_pycocotools(metrics, dataset, dt)


def test_s3_inputs_and_outputs(s3_bucket):
    dataset, dt, gt_uri, run = _setup(s3_bucket)
    out = f"{s3_bucket}/eval"
    metrics = run_evaluate(EvaluateConfig(detections=run, ground_truth=gt_uri, out=out))
    _assert_equals_pycocotools(metrics, dataset, dt)
    assert json.loads(storage.read_text(f"{out}/metrics.json")) == metrics
    assert storage.read_bytes(f"{out}/pr_curves.png")[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["coco", "voc"])
def test_ray_equals_local(ray_cluster, s3_bucket, metric):
    _, _, gt_uri, run = _setup(s3_bucket, files=5)
    base = EvaluateConfig(detections=run, ground_truth=gt_uri, out=f"{s3_bucket}/local", metric=metric)
    local = run_evaluate(base)
    # A few buckets and read tasks, so that images spread over buckets and files over tasks.
    size = sum(storage.filesystem(run).du(storage.resolve(run)[1] + "/detections", total=False).values())
    update = {"use_ray": True, "rows_per_bucket": size // 20 // 4, "bytes_per_read_task": size // 3, "out": f"{s3_bucket}/ray"}
    distributed = run_evaluate(base.model_copy(update=update))
    assert distributed["execution"]["engine"] == "ray" and distributed["execution"]["buckets"] > 1
    assert distributed["execution"]["read_tasks"] > 1
    assert _without_execution(distributed) == _without_execution(local)


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("missing_ground_truth", StorageError, "no such file"),
        ("not_coco", ValueError, "not COCO ground truth"),
        ("not_a_run", ValueError, "not a detect output"),
        ("no_run_json", ValueError, "no run.json"),
    ],
)
def test_bad_inputs_name_the_fix(tmp_path, case, error, match):
    _, _, gt_uri, run = _setup(str(tmp_path))
    if case == "missing_ground_truth":
        gt_uri = str(tmp_path / "nope.json")
    elif case == "not_coco":
        Path(gt_uri).write_text(json.dumps({"images": []}))
    elif case == "not_a_run":
        run = str(tmp_path)  # a folder, but no detections/ and no run.json
    else:
        Path(run, "run.json").unlink()
    with pytest.raises(error, match=match):
        run_evaluate(EvaluateConfig(detections=run, ground_truth=gt_uri, out=str(tmp_path / "e")))


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="bogus"):
        EvaluateConfig(detections="r", ground_truth="g", out="o", bogus=1)


@pytest.mark.slow
def test_job_entrypoint(ray_cluster, tmp_path):
    _, _, gt_uri, run = _setup(str(tmp_path))
    cmd = [sys.executable, str(REPO / "jobs" / "evaluate.py"), "--detections", run, "--out", str(tmp_path / "e"), "--ray-address", ray_cluster.address]
    done = subprocess.run([*cmd, "--ground-truth", gt_uri], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    lines = [l for l in done.stdout.splitlines() if l.startswith(" Average")]
    assert lines == summary_lines(json.loads((tmp_path / "e" / "metrics.json").read_text()))
    failed = subprocess.run([*cmd, "--ground-truth", str(tmp_path / "missing.json")], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert failed.returncode != 0 and "missing.json" in failed.stderr


def test_uncommitted_detect_parts_are_left_out(tmp_path):
    """detect commits a detections part by writing the images part of the same name; a part without one
    is debris of an interrupted attempt and would double-count."""
    dataset, dt, gt_uri, run = _setup(str(tmp_path))
    (Path(run) / "detections" / "part-00000.parquet").rename(Path(run) / "detections" / "00000000-0000000-0000040-last.parquet")
    (Path(run) / "images" / "part-00000.parquet").rename(Path(run) / "images" / "00000000-0000000-0000040-last.parquet")
    debris = Path(run) / "detections" / "00000000-0000000-0000020.parquet"
    debris.write_bytes((Path(run) / "detections" / "part-00001.parquet").read_bytes())
    metrics = run_evaluate(EvaluateConfig(detections=run, ground_truth=gt_uri, out=str(tmp_path / "e")))
    assert metrics["pairing"]["detection_files_uncommitted"] == 1
    _assert_equals_pycocotools(metrics, dataset, dt)


def test_cli_evaluate_prints_the_summary(tmp_path, capsys):
    from detbatch.cli import main

    _, _, gt_uri, run = _setup(str(tmp_path))
    assert main(["evaluate", "--detections", run, "--ground-truth", gt_uri, "--out", str(tmp_path / "e")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:12] == summary_lines(json.loads((tmp_path / "e" / "metrics.json").read_text()))
    assert main(["evaluate", "--detections", run, "--ground-truth", str(tmp_path / "missing.json"), "--out", str(tmp_path / "f")]) != 0


def test_image_set_run_counts_only_the_images_the_run_has(tmp_path):
    dataset, dt = adversarial_coco(6)
    kept = [im for im in dataset["images"]][::2]
    images = [{"image_id": im["id"], "uri": f"/in/{im['file_name']}"} for im in kept]
    gt_uri = str(tmp_path / "gt.json")
    Path(gt_uri).write_text(json.dumps(dataset))
    on_kept = np.isin(dt.image_id, [im["id"] for im in kept])
    write_detect_output(str(tmp_path / "run"), dt.take(on_kept), images, input_uri="/in", manifest=gt_uri)
    config = EvaluateConfig(detections=str(tmp_path / "run"), ground_truth=gt_uri, out=str(tmp_path / "e"))
    ids = {im["id"] for im in kept}
    subset = dataset | {"images": kept, "annotations": [a for a in dataset["annotations"] if a["image_id"] in ids]}
    _assert_equals_pycocotools(run_evaluate(config.model_copy(update={"image_set": "run"})), subset, dt.take(on_kept))
    _assert_equals_pycocotools(run_evaluate(config), dataset, dt.take(on_kept))  # missed images count
