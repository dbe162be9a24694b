"""Parallel listing (detbatch.detect.listing): the same files, order and digests as the sequential one,
locally and on S3, with the sub-prefixes listed in Ray tasks; and the listing written as parts, by the
tasks and by the driver, holding the same files in the same order."""

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
    # Tasks: the root, s0 and s1, then s0/d0 at the depth limit, listed whole.
    assert "listed in 4 parallel tasks" in caplog.text


def test_parallel_listing_of_a_flat_prefix_is_the_sequential_one(tmp_path):
    for name in ("b.png", "a.png"):
        (tmp_path / name).write_bytes(b"x")
    assert units.list_input(str(tmp_path), parallel=True).uris == (str(tmp_path / "a.png"), str(tmp_path / "b.png"))


# Names whose order as strings is not the order of a walk folder by folder: "a-b/" < "a.png" < "a/",
# and a key that is also a prefix's name on S3 ("a" beside "a/").
ORDER_KEYS = ["a.png", "a/1.png", "a/2.png", "a-b/x.png", "a0.png", "a/z/9.png", "b/0.png", "b/1.png", "b/2.png",
              "b/c/d/e.png", "c.tar", "z.png"]


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("where", ["local", "s3"])
def test_listing_parts_hold_the_sorted_listing(parallel, where, tmp_path, request):
    from detbatch.detect import listing

    base = str(tmp_path) if where == "local" else f"{request.getfixturevalue('s3_bucket')}/parts-test"
    root = storage.join(base, "tree")
    for key in ORDER_KEYS:
        storage.write_bytes(storage.join(root, key), key.encode())
    sequential = units.list_input(root, "images", parallel=False)
    assert list(sequential.uris) == sorted(sequential.uris) and len(sequential.uris) == len(ORDER_KEYS) - 1
    parts = storage.join(base, "parts")
    # Runs of 2 or more files written by their tasks, in parts of at most 3; shorter runs gathered here.
    job = listing.ListingJob(root=root, parts=parts, part_rows=3, inline_max=2)
    shape = units.input_shape(root)
    found = units.gather(shape, job, parallel=parallel)
    rows = [r for name, _ in found.parts for r in listing.read_part(storage.join(parts, name)).to_pylist()]
    assert [r["uri"] for r in rows] == list(sequential.uris)
    assert [r["version"] for r in rows] == list(sequential.versions)
    assert [r["size"] for r in rows] == [len(k) for k in sorted(k for k in ORDER_KEYS if k.endswith(".png"))]
    assert all(0 < n <= 3 for _, n in found.parts) and sum(n for _, n in found.parts) == len(rows)
    assert len(found.parts) >= 4  # 11 files in parts of at most 3
    assert units.digest_hex(found.names) == sequential.digest
    assert units.digest_hex(found.contents) == sequential.content_digest
    # A task's long run never crosses to the driver: the task wrote it, and hands back the parts' names.
    whole = listing.list_level(root, recurse=True, job=job)[1]
    assert [what for what, _ in whole.segments] == ["parts"] and sum(n for _, n in whole.segments[0][1]) == 11
    assert found.counts == {"images": 11, "tar": 1}
    assert [(u, v.split(":")[0]) for u, v in found.others] == [(storage.join(root, "c.tar"), "5")]
