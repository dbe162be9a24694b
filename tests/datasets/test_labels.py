"""VOC and YOLO labels where COCO is read: ``prepare`` shards and training's sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detbatch.datasets.prepare import prepare_shards
from detbatch.datasets.synth import synthesize
from detbatch.detect.read import shard_samples
from detbatch.training.data import load_source


@pytest.fixture(scope="module")
def formats(tmp_path_factory) -> Path:
    """The same 6 synthetic images labelled three ways: root/{coco,voc,yolo}."""
    root = tmp_path_factory.mktemp("formats")
    for format in ("coco", "voc", "yolo"):
        synthesize(str(root / format), 6, seed=2, image_size=64, max_objects=2, format=format)
    return root


LABELS = {"coco": "annotations.json", "voc": "Annotations", "yolo": "labels"}


def boxes(items: list[dict]) -> list[tuple]:
    return [(it["uri"].rsplit("/", 1)[-1], [(a["category_id"], a["bbox"]) for a in json.loads(it["annotations"])]) for it in items]


@pytest.mark.parametrize("format", ["voc", "yolo"])
def test_training_reads_voc_and_yolo_as_it_reads_coco(formats, format):
    coco = load_source(str(formats / "coco" / LABELS["coco"]), None, None, "train")
    other = load_source(str(formats / format / LABELS[format]), None, None, "train")  # images/ found beside the labels
    assert boxes(other.items) == boxes(coco.items) and other.kind == "images"
    assert [(c["id"], c["name"]) for c in other.categories] == [(c["id"], c["name"]) for c in coco.categories]


def test_prepare_packs_voc_labels_in_coco_form(formats, tmp_path):
    result = prepare_shards(str(formats / "voc" / "images"), str(tmp_path / "shards"), "tar", annotations=str(formats / "voc" / "Annotations"))
    assert result.num_images == 6
    metas = [s.meta for s in shard_samples(result.shard_uris[0], "tar")]
    want = json.loads((formats / "coco" / "annotations.json").read_text())["annotations"]
    got = [a for m in metas for a in m["annotations"]]
    assert [(a["image_id"], a["category_id"], a["bbox"]) for a in got] == [(a["image_id"], a["category_id"], a["bbox"]) for a in want]
    assert json.loads((tmp_path / "shards" / "dataset.json").read_text())["categories"] == [
        {"id": 1, "name": "square"}, {"id": 2, "name": "circle"}, {"id": 3, "name": "triangle"}]  # fmt: skip


def test_synth_formats_write_the_same_images(formats):
    for format in ("voc", "yolo"):
        assert sorted(p.name for p in (formats / format / "images").iterdir()) == [f"{i:06d}.png" for i in range(1, 7)]
        assert (formats / format / "images" / "000001.png").read_bytes() == (formats / "coco" / "images" / "000001.png").read_bytes()
        assert (formats / format / "data.yaml").read_text().startswith("nc: 3\nnames:\n- square\n- circle\n- triangle\n")
    assert sorted(p.name for p in (formats / "voc" / "Annotations").iterdir()) == [f"{i:06d}.xml" for i in range(1, 7)]


def test_training_counts_its_bad_labels(formats, tmp_path, caplog):
    """A bad label file is left out of training, and the run says so, by kind: not a silent loss."""
    import shutil

    root = tmp_path / "yolo"
    shutil.copytree(formats / "yolo", root)
    (root / "labels" / "000002.txt").write_text("0 0.5 0.5 not-a-number 0.1\n")
    (root / "labels" / "000003.txt").write_text("7 0.5 0.5 0.2 0.2\n")  # class 7 of 3
    with caplog.at_level("WARNING", logger="detbatch.training.data"):
        source = load_source(str(root / "labels"), None, None, "train")
    assert "data.train_annotations" in caplog.text and "1 unknown_class" in caplog.text and "1 unparsable" in caplog.text
    assert len(source.items) == 5  # the unparsable file's image is left out; the unknown class's box dropped
