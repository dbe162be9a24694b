"""Fixtures of the detect stage tests."""

import pytest

from tests.helpers.exactly_once import STORAGES, clean_reference, shared_store
from tests.helpers.images import png_bytes


@pytest.fixture(scope="module", params=STORAGES)
def store(request, tmp_path_factory, s3_endpoint):
    """The session's input and weights on local disk, then on S3 (tests.helpers.exactly_once)."""
    return shared_store(request.param, tmp_path_factory, s3_endpoint)


@pytest.fixture(scope="module")
def clean(store, ray_cluster):
    """The clean run of ``store``'s input, once per session and storage: what a faulty run must equal."""
    return clean_reference(store)


@pytest.fixture
def image_dir(tmp_path):
    """Three PNGs (one in a subfolder, one with an upper-case extension) and a text file that is not listed."""
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    for name in ["b.png", "a.png", "sub/c.PNG"]:
        (root / name).write_bytes(png_bytes())
    (root / "notes.txt").write_text("not listed: not an image extension")
    return root
