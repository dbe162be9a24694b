"""Names of run images and pairing by file name: a shard member's '#' is not a plain file's '#'."""

from __future__ import annotations

import pytest

from detbatch.metrics.pairing import pair_file_names, relative_name


@pytest.mark.parametrize("kind", ["images", None])  # None: a run.json from before the kind was recorded
def test_a_plain_file_keeps_its_hash(kind):
    """``a#b.jpg`` on disk is a file named ``a#b.jpg``, not member ``b.jpg`` of a shard ``a``."""
    assert relative_name("/in/sub/a#b.jpg", "/in", kind) == "sub/a#b.jpg"
    assert relative_name("s3://bucket/in/#1.png", "s3://bucket/in", kind) == "#1.png"
    assert relative_name("/in/x#y/a.jpg", "/in", kind) == "x#y/a.jpg"


@pytest.mark.parametrize(
    "uri, member",
    [
        ("s3://d/in/shard-0.tar#x/y.jpg", "x/y.jpg"),
        ("/in/shard-0.parquet#./x.jpg", "x.jpg"),
        ("/in/SHARD.TAR#a.jpg", "a.jpg"),
        ("/in/a#b/shard.tar#c#d.jpg", "c#d.jpg"),  # '#' in the shard's folder and in the member name
    ],
)
@pytest.mark.parametrize("kind", ["tar", "parquet", None])
def test_a_shard_member_is_named_by_its_member(uri, member, kind):
    assert relative_name(uri, "/in", kind) == member


def test_a_plain_image_named_like_a_shard_member_stays_whole_when_the_kind_is_known():
    assert relative_name("/in/x.tar#y.jpg", "/in", "images") == "x.tar#y.jpg"


def test_pairing_matches_plain_files_with_a_hash():
    names = ["a#b.jpg", "sub/c#1.jpg", "b.jpg"]
    uris = ["/in/a#b.jpg", "/in/sub/c#1.jpg", "/in/shard.tar#b.jpg"]
    result = pair_file_names(uris, "/in", names, kind=None)
    assert result.gt_index.tolist() == [0, 1, 2] and result.exact == 3
