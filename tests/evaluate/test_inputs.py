"""The inputs of detbatch.evaluate: bad inputs, committed parts only, pairing by image id and by file name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detbatch.detect import sink
from detbatch.errors import InputError
from detbatch.evaluate import EvaluateConfig, run_evaluate
from detbatch.metrics import Detections
from detbatch.storage import StorageError

from tests.evaluate.runs import assert_equals_pycocotools, setup_run, uri_hash
from tests.helpers.detect_output import write_detect_output
from tests.helpers.oracle import adversarial_coco


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
    _, _, gt_uri, run = setup_run(str(tmp_path))
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


def test_sink_part_names_tell_committed_parts_from_debris(tmp_path):
    """The one reader of detect's commit protocol, used by detect's resume and by evaluate."""
    committed, debris = "00000000-0000000-0000040-last.parquet", "00000001-0000000-0000020.parquet"
    for name in (f"detections/{committed}", f"images/{committed}", f"detections/{debris}",
                 "detections/part-00001.parquet", "images/part-00000.parquet", "images/notes.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    log = sink.read_commit_log(str(tmp_path))
    assert [p.name for p in log.parts] == [committed]  # other names are not detect's
    assert log.debris == [str(tmp_path / "detections" / debris)]
    assert log.files(str(tmp_path), "images") == [str(tmp_path / "images" / committed)]
    empty = sink.read_commit_log(str(tmp_path / "missing"))
    assert empty.parts == [] and empty.debris == []


def test_uncommitted_detect_parts_are_left_out(tmp_path):
    """detect commits a detections part by writing the images part of the same name; a part without one
    is debris of an interrupted attempt and would double-count."""
    dataset, dt, gt_uri, run = setup_run(str(tmp_path))
    (Path(run) / "detections" / "part-00000.parquet").rename(Path(run) / "detections" / "00000000-0000000-0000040-last.parquet")
    (Path(run) / "images" / "part-00000.parquet").rename(Path(run) / "images" / "00000000-0000000-0000040-last.parquet")
    debris = Path(run) / "detections" / "00000000-0000000-0000020.parquet"
    debris.write_bytes((Path(run) / "detections" / "part-00001.parquet").read_bytes())
    metrics = run_evaluate(EvaluateConfig(detections=run, ground_truth=gt_uri, out=str(tmp_path / "e")))
    assert metrics["pairing"]["detection_files_uncommitted"] == 1
    assert_equals_pycocotools(metrics, dataset, dt)


def test_file_name_pairing(tmp_path):
    """Without a manifest, run images pair by name relative to the input root, then by unique basename."""
    dataset, dt = adversarial_coco(4)
    files = [im["file_name"] for im in dataset["images"]]
    dataset["images"][0]["file_name"] = "train/" + files[0]  # run has it at the root: basename match
    root = "s3://data/in"
    uris = [f"{root}/{f}" for f in files]
    uris[1] = f"{root}/shard-0.tar#{files[1]}"  # shard member: its name is the part after '#'
    uris[2] = f"{root}/shard-1.tar#{files[3]}"  # the same member name as image 3: ambiguous, both unpaired
    run_ids = [uri_hash(u) for u in uris]
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
    assert_equals_pycocotools(metrics, dataset, dt.take(evaluated))
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
    run_id = {im["id"]: uri_hash(f"{root}/{im['file_name']}") for im in dataset["images"]}
    run_dt = Detections(np.array([run_id[int(i)] for i in dt.image_id]), dt.category_id, dt.score, dt.boxes)
    images = [{"image_id": run_id[im["id"]], "uri": f"{root}/{im['file_name']}"} for im in dataset["images"]]
    write_detect_output(str(tmp_path / "run"), run_dt, images, input_uri=root, manifest=None, files=4)
    gt = str(coco128 / "annotations" / "instances.json")
    metrics = run_evaluate(EvaluateConfig(detections=str(tmp_path / "run"), ground_truth=gt, out=str(tmp_path / "e")))
    assert metrics["pairing"]["paired_by_exact_name"] == len(dataset["images"])
    assert_equals_pycocotools(metrics, dataset, dt)


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
    assert_equals_pycocotools(run_evaluate(config.model_copy(update={"image_set": "run"})), subset, dt.take(on_kept))
    assert_equals_pycocotools(run_evaluate(config), dataset, dt.take(on_kept))  # missed images count


def test_unfinished_run_is_refused_unless_allowed(tmp_path):
    """A detect output without run.json holds only part of its images: scoring it as if complete would
    report a number for images it never saw. Refused, even with explicit pairing, unless allowed."""
    dataset, dt, gt_uri, run = setup_run(str(tmp_path))
    Path(run, "run.json").unlink()
    config = {"detections": run, "ground_truth": gt_uri, "out": str(tmp_path / "e"), "pair_by": "image_id"}
    with pytest.raises(InputError, match=r"not finished \(no run.json\).*--allow-incomplete"):
        run_evaluate(EvaluateConfig(**config))
    assert not (tmp_path / "e").exists()
    metrics = run_evaluate(EvaluateConfig(**config, allow_incomplete=True))
    assert metrics["complete"] is False
    assert "not finished" in (tmp_path / "e" / "report.md").read_text()
    assert_equals_pycocotools(metrics, dataset, dt)
    finished = run_evaluate(EvaluateConfig(**{**config, "detections": setup_run(str(tmp_path / "b"))[3]}))
    assert finished["complete"] is True


def test_ground_truth_drops_are_counted_in_metrics(tmp_path):
    """Annotations evaluation cannot use are dropped, counted by reason in metrics.json and report.md;
    the rest equals pycocotools on the ground truth without them."""
    dataset, dt = adversarial_coco(7)
    clean = json.loads(json.dumps(dataset))
    image = dataset["images"][0]["id"]
    bad = [
        {"category_id": 0, "bbox": [0, 0, 4, 4]},
        {"image_id": 123456789, "category_id": dataset["categories"][0]["id"], "bbox": [0, 0, 4, 4]},
        {"image_id": image, "category_id": dataset["categories"][0]["id"], "bbox": [float("nan"), 0, 4, 4]},
        {"image_id": image, "category_id": dataset["categories"][0]["id"], "bbox": [0, 0, -4, 4]},
    ]
    dataset["annotations"] += [{"id": 10**6 + i, "iscrowd": 0, "area": 16.0, **a} for i, a in enumerate(bad)]
    gt_uri = str(tmp_path / "gt.json")
    Path(gt_uri).write_text(json.dumps(dataset))
    images = [{"image_id": im["id"], "uri": f"/in/{im['file_name']}"} for im in dataset["images"]]
    write_detect_output(str(tmp_path / "run"), dt, images, input_uri="/in", manifest=gt_uri)
    metrics = run_evaluate(EvaluateConfig(detections=str(tmp_path / "run"), ground_truth=gt_uri, out=str(tmp_path / "e")))
    dropped = metrics["ground_truth"]["annotations_dropped"]
    assert dropped == {"no_image_id": 1, "unknown_image_id": 1, "no_category_id": 0, "unknown_category_id": 0,
                       "non_finite_bbox": 1, "negative_size": 1}  # fmt: skip
    assert metrics["ground_truth"]["annotations"] == len(clean["annotations"])
    assert "| annotations_dropped.negative_size | 1 |" in (tmp_path / "e" / "report.md").read_text()
    assert_equals_pycocotools(metrics, clean, dt)


def test_ground_truth_that_cannot_be_used_names_the_file_and_entry(tmp_path):
    dataset, _, gt_uri, run = setup_run(str(tmp_path))
    dataset["images"][3].pop("id")
    Path(gt_uri).write_text(json.dumps(dataset))
    with pytest.raises(InputError, match=rf"^{gt_uri}: images\[3\] \(file_name '[^']+'\) has no id"):
        run_evaluate(EvaluateConfig(detections=run, ground_truth=gt_uri, out=str(tmp_path / "e")))


@pytest.mark.parametrize("kind", ["images", None])  # None: a run.json that does not record the input kind
def test_file_name_pairing_of_plain_files_with_a_hash(tmp_path, kind):
    """A plain file's '#' is part of its name (only a shard member's uri is SHARD.tar#MEMBER)."""
    dataset, dt = adversarial_coco(4)
    for im in dataset["images"]:
        im["file_name"] = f"set#{im['id'] % 3}/{im['id']}#x.jpg"
    root = "/data/in#1"
    run_ids = {im["id"]: uri_hash(f"{root}/{im['file_name']}") for im in dataset["images"]}
    known = np.isin(dt.image_id, list(run_ids))
    dt = dt.take(known)
    run_dt = Detections(np.array([run_ids[int(i)] for i in dt.image_id]), dt.category_id, dt.score, dt.boxes)
    images = [{"image_id": run_ids[im["id"]], "uri": f"{root}/{im['file_name']}"} for im in dataset["images"]]
    gt_uri = str(tmp_path / "gt.json")
    Path(gt_uri).write_text(json.dumps(dataset))
    run = str(tmp_path / "run")
    write_detect_output(run, run_dt, images, input_uri=root, manifest=None)
    info = json.loads(Path(run, "run.json").read_text())
    info["input"] |= {"kind": kind} if kind else {}
    Path(run, "run.json").write_text(json.dumps(info))
    metrics = run_evaluate(EvaluateConfig(detections=run, ground_truth=gt_uri, out=str(tmp_path / "e")))
    assert metrics["pairing"]["paired_by_exact_name"] == len(dataset["images"])
    assert_equals_pycocotools(metrics, dataset, dt)
