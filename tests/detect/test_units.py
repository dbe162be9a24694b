"""Listing the input and planning units: order, globs, clear errors, the digest, image ids."""

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
