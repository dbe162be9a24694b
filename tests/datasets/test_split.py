"""``detbatch split``: seeded, stratified (every category in every split that can have it), group-aware."""

from __future__ import annotations

import json
import random

import pytest

from detbatch.cli import main
from detbatch.datasets.split import group_keys, split_dataset, write_splits
from detbatch.errors import InputError


def dataset(videos: int = 30, frames: int = 4, rare: int = 3, seed: int = 0) -> dict:
    """``videos`` x ``frames`` images named ``v{video}_f{frame}.jpg`` with a ``site`` field (video // 3);
    categories 1 and 2 everywhere, category 3 (rare) in the videos 0..rare-1 only."""
    rng = random.Random(seed)
    images, annotations = [], []
    for v in range(videos):
        for f in range(frames):
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": f"v{v:03d}_f{f}.jpg", "width": 64, "height": 64, "site": f"s{v // 3}"})
            cats = [rng.choice([1, 2])] + ([3] if v < rare else [])
            for c in cats:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": c, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0})
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "rare"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def split_of(result) -> dict[str, str]:
    return {im["file_name"]: name for name, coco in result.splits.items() for im in coco["images"]}


def test_every_image_in_one_split_with_its_annotations():
    coco = dataset()
    result = split_dataset(coco, (0.7, 0.15, 0.15), seed=1)
    where = split_of(result)
    assert sorted(where) == sorted(im["file_name"] for im in coco["images"])
    for name, part in result.splits.items():
        ids = {im["id"] for im in part["images"]}
        assert {a["image_id"] for a in part["annotations"]} <= ids
        assert part["categories"] == coco["categories"]
        assert result.report["splits"][name]["images"] == len(part["images"])
        assert result.report["splits"][name]["boxes_per_category"]["rare"] == sum(a["category_id"] == 3 for a in part["annotations"])
    assert sum(len(p["annotations"]) for p in result.splits.values()) == len(coco["annotations"])
    sizes = [len(result.splits[s]["images"]) for s in ("train", "val", "test")]
    assert sizes == [84, 18, 18]  # 120 images: 0.7 / 0.15 / 0.15 exactly, single images placed freely


def test_seeded_and_independent_of_input_order():
    coco = dataset()
    first = split_of(split_dataset(coco, seed=3))
    shuffled = coco | {"images": random.Random(9).sample(coco["images"], len(coco["images"]))}
    assert split_of(split_dataset(shuffled, seed=3)) == first
    assert split_of(split_dataset(coco, seed=4)) != first


@pytest.mark.parametrize("seed", range(5))
def test_a_rare_category_reaches_every_split_when_it_has_enough_groups(seed):
    coco = dataset(rare=3)
    result = split_dataset(coco, (0.8, 0.1, 0.1), seed=seed, group_by=r"^(v\d+)_")
    # 'rare' is in 3 videos, one per split, whatever the seed: a plain random 80/10/10 split of 30 videos
    # would leave val or test without it most of the time.
    assert all(r["images_per_category"]["rare"] > 0 for r in result.report["splits"].values())
    assert result.missing == {"train": [], "val": [], "test": []}


def test_too_rare_a_category_is_not_forced():
    result = split_dataset(dataset(rare=2), (0.8, 0.1, 0.1), seed=0, group_by=r"^(v\d+)_")
    assert sum(r["images_per_category"]["rare"] > 0 for r in result.report["splits"].values()) <= 2
    assert result.missing == {"train": [], "val": [], "test": []}  # not enough groups: not a gap


@pytest.mark.parametrize("group_by, key_of", [
    (r"^(v\d+)_", lambda im: im["file_name"][:4]),  # a capture group: the video
    (r"^v\d+", lambda im: im["file_name"][:4]),  # no group: the whole match
    ("field:site", lambda im: im["site"]),  # a metadata field: sites of three videos each
])  # fmt: skip
def test_groups_never_straddle_splits(group_by, key_of):
    coco = dataset()
    for seed in range(3):
        result = split_dataset(coco, (0.6, 0.2, 0.2), seed=seed, group_by=group_by)
        where = split_of(result)
        splits_of_group: dict[str, set[str]] = {}
        for im in coco["images"]:
            splits_of_group.setdefault(key_of(im), set()).add(where[im["file_name"]])
        assert all(len(s) == 1 for s in splits_of_group.values())
        assert result.report["groups"] == len(splits_of_group) and result.report["ungrouped_images"] == 0


def test_images_without_a_key_are_groups_of_their_own():
    images = [{"id": 1, "file_name": "v1_a.jpg"}, {"id": 2, "file_name": "other.jpg"}, {"id": 3, "file_name": "v1_b.jpg"}]
    keys, ungrouped = group_keys(images, r"^(v\d+)_")
    assert keys[0] == keys[2] != keys[1] and ungrouped == 1
    keys, ungrouped = group_keys(images, "field:site")
    assert len(set(keys)) == 3 and ungrouped == 3


def test_a_zero_fraction_makes_no_split_and_bad_arguments_are_refused():
    result = split_dataset(dataset(), (0.9, 0.1, 0.0), seed=0)
    assert sorted(result.splits) == ["train", "val"]
    with pytest.raises(InputError, match="sum to 1"):
        split_dataset(dataset(), (0.8, 0.1, 0.2))
    with pytest.raises(InputError, match="not a regular expression"):
        split_dataset(dataset(), group_by="v(")


def test_split_cli_writes_three_jsons_and_prints_the_counts(tmp_path, capsys):
    (tmp_path / "all.json").write_text(json.dumps(dataset()))
    assert main(["split", str(tmp_path / "all.json"), str(tmp_path / "out"), "--seed", "2", "--group-by", "field:site"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("split: 120 images, 132 boxes; problems: none; 10 groups")
    assert printed[1].split() == ["split", "images", "groups", "boxes", "a", "b", "rare"]
    report = json.loads((tmp_path / "out" / "split.json").read_text())
    for name in ("train", "val", "test"):
        part = json.loads((tmp_path / "out" / f"{name}.json").read_text())
        row = next(line.split() for line in printed if line.split()[:1] == [name])
        assert int(row[1]) == len(part["images"]) == report["splits"][name]["images"]
    assert main(["split", str(tmp_path / "all.json"), str(tmp_path / "o2"), "--fractions", "0.5,x"]) == 2


def test_write_splits_round_trip(tmp_path):
    result = split_dataset(dataset(), seed=0)
    uris = write_splits(result, str(tmp_path))
    assert {k: json.loads(open(u).read()) for k, u in uris.items()} == result.splits
