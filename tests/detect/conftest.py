"""Fixtures of the detect stage tests."""

import pytest

from tests.helpers.images import png_bytes


@pytest.fixture
def image_dir(tmp_path):
    """Three PNGs (one in a subfolder, one with an upper-case extension) and a text file that is not listed."""
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    for name in ["b.png", "a.png", "sub/c.PNG"]:
        (root / name).write_bytes(png_bytes())
    (root / "notes.txt").write_text("not listed: not an image extension")
    return root
