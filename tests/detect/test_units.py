"""Listing the input and planning units: order, globs, clear errors, the digest, image ids."""

import json

import pytest

from detbatch.detect import units
from tests.helpers.images import png_bytes


def test_list_folder_sorted_recursive(image_dir):
    listing = units.list_input(str(image_dir))
    assert listing.kind == "images"
    assert [listing.relative_name(u) for u in listing.uris] == ["a.png", "b.png", "sub/c.PNG"]


def test_list_glob(image_dir):
    listing = units.list_input(str(image_dir / "*.png"))
    assert [listing.relative_name(u) for u in listing.uris] == ["a.png", "b.png"]


def test_list_missing_prefix_is_clear(tmp_path):
    with pytest.raises(units.InputError, match="no such file, folder or prefix"):
        units.list_input(str(tmp_path / "nope"))


def test_list_mixed_kinds_asks_for_format(image_dir):
    (image_dir / "s.tar").write_bytes(b"")
    with pytest.raises(units.InputError, match="--input-format"):
        units.list_input(str(image_dir))
    assert units.list_input(str(image_dir), "tar").kind == "tar"


def test_listing_digest_changes_with_input(image_dir):
    before = units.list_input(str(image_dir)).digest
    assert units.list_input(str(image_dir)).digest == before
    (image_dir / "d.png").write_bytes(png_bytes())
    assert units.list_input(str(image_dir)).digest != before


def test_derived_id_is_stable_and_positive():
    a = units.derived_image_id("s3://b/x.jpg")
    assert a == units.derived_image_id("s3://b/x.jpg") and 0 <= a < 2**63
    assert a != units.derived_image_id("s3://b/y.jpg")


def test_units_take_ids_from_manifest(image_dir):
    listing = units.list_input(str(image_dir))
    planned = units.plan_units(listing, 2, {"b.png": 7})
    assert [len(u["uris"]) for u in planned] == [2, 1]
    assert planned[0]["image_ids"][1] == 7
    assert planned[0]["image_ids"][0] == units.derived_image_id(listing.uris[0])


def _manifest(tmp_path, images):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    return str(path)


@pytest.mark.parametrize(
    "images, match",
    [
        ([{"id": 1, "file_name": "a.png"}, {"file_name": "b.png"}], r"images\[1\] \(file_name 'b.png'\) has no id"),
        ([{"id": 3, "file_name": "a.png"}, {"id": 3, "file_name": "b.png"}], r"images\[0\] \('a.png'\) and images\[1\] \('b.png'\) have the same id 3"),
        ([{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "./a.png"}], r"images\[0\] \(id 1\) and images\[1\] \(id 2\) are both file 'a.png'; list each file once"),
        ([{"id": 1}], r"images\[0\] \(id 1\) has no file_name"),
        ([{"id": "x1", "file_name": "a.png"}], r"images\[0\] \(file_name 'a.png'\) has id 'x1', not an integer"),
    ],
    ids=["no_id", "one_id_two_files", "one_file_twice", "no_file_name", "id_not_an_integer"],
)
def test_manifest_refuses_what_cannot_give_ids(tmp_path, images, match):
    """Before: a missing id was a KeyError, and two files with one id (or one file twice) were accepted,
    the later entry silently winning."""
    uri = _manifest(tmp_path, images)
    with pytest.raises(units.InputError, match=rf"^manifest {uri}: {match}"):
        units.load_manifest(uri)


def test_a_plain_file_with_a_hash_takes_its_manifest_id(image_dir, tmp_path):
    """``a#b.png`` is a file of that name, not member ``b.png`` of a shard: it gets its own manifest id."""
    (image_dir / "a#b.png").write_bytes(png_bytes())
    listing = units.list_input(str(image_dir))
    assert [listing.relative_name(u) for u in listing.uris] == ["a#b.png", "a.png", "b.png", "sub/c.PNG"]
    manifest = units.load_manifest(_manifest(tmp_path, [{"id": 5, "file_name": "a#b.png"}, {"id": 6, "file_name": "b.png"}]))
    planned = units.plan_units(listing, 10, manifest)
    assert planned[0]["image_ids"][:3] == [5, units.derived_image_id(listing.uris[1]), 6]
