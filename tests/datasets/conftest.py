"""Small labelled folders for the label-format tests: images of known sizes, label files written by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.images import png_bytes


def write_images(folder: Path, sizes: dict[str, tuple[int, int]]) -> Path:
    """PNGs named by ``sizes`` (file name -> (width, height)) under ``folder``."""
    for name, size in sizes.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(png_bytes(size=size))
    return folder


def write_files(folder: Path, files: dict[str, str | bytes]) -> Path:
    """Text or bytes files named by ``files`` under ``folder``."""
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        data = content.encode("utf-8") if isinstance(content, str) else content
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def dataset_dir(tmp_path) -> Path:
    """``tmp_path/images`` with three PNGs: a.png 80x40, b.png 30x60, sub/c.png 50x50."""
    write_images(tmp_path / "images", {"a.png": (80, 40), "b.png": (30, 60), "sub/c.png": (50, 50)})
    return tmp_path
