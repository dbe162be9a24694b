"""Parallel listing (detbatch.detect.listing): the same files, order and digests as the sequential one,
locally and on S3, with the sub-prefixes listed in Ray tasks."""

from __future__ import annotations

import logging

import pytest

from detbatch import storage
from detbatch.detect import units

pytestmark = pytest.mark.usefixtures("ray_cluster")

# Sub-prefixes down to listing.SPLIT_DEPTH (2 here) and below it (listed by one task with find), files at
# every level.
KEYS = ["top.png", "notes.txt", "s0/x.png", "s0/y.png", "s1/x.png", "s0/d0/p.png", "s0/d0/e/f/deep.png"]


@pytest.fixture(params=["local", "s3"])
def tree(request, tmp_path):
    if request.param == "local":
        root = str(tmp_path / "tree")
    else:
        root = f"{request.getfixturevalue('s3_bucket')}/tree"
    for i, key in enumerate(KEYS):
        storage.write_bytes(storage.join(root, key), b"x" * (i + 1))
    return root


def test_parallel_listing_equals_the_sequential_one(tree, caplog, monkeypatch):
    from detbatch.detect import listing

    monkeypatch.setattr(listing, "SPLIT_DEPTH", 2)
    sequential = units.list_input(tree, parallel=False)
    with caplog.at_level(logging.INFO, logger="detbatch.detect.listing"):
        parallel = units.list_input(tree, parallel=True)
    assert parallel.uris == sequential.uris and len(parallel.uris) == len(KEYS) - 1  # notes.txt is not an image
    assert list(parallel.uris) == sorted(parallel.uris)
    assert parallel.digest == sequential.digest and parallel.content_digest == sequential.content_digest
    assert parallel.versions == sequential.versions and all(v.split(":")[1] for v in parallel.versions)
    # Tasks: s0 and s1, then s0/d0 at the depth limit, listed whole.
    assert "listed 7 files in 3 parallel tasks" in caplog.text


def test_parallel_listing_of_a_flat_prefix_is_the_sequential_one(tmp_path):
    for name in ("b.png", "a.png"):
        (tmp_path / name).write_bytes(b"x")
    assert units.list_input(str(tmp_path), parallel=True).uris == (str(tmp_path / "a.png"), str(tmp_path / "b.png"))
