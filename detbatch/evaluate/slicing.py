"""The images of each slice of ``--slice-by COLUMN`` (docs/evaluate.md, "Slices"): a column of the run's
images table, of a metadata table joined on ``image_id`` or ``uri``, or a derived bucket."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from detbatch import storage
from detbatch.errors import InputError
from detbatch.evaluate.inputs import Pairing, Run
from detbatch.metrics.columns import GroundTruth
from detbatch.metrics.slices import Slices

# Derived columns and their buckets, (lowest value, label) in order: an image goes to the last bucket whose
# lowest value it reaches. num_objects: the image's regular (not crowd) ground truth; image_size: the
# longer side of the image in pixels (the images table's width and height).
DERIVED = {
    "num_objects": ((0, "0"), (1, "1"), (2, "2-5"), (6, "6-10"), (11, "11+")),
    "image_size": ((0, "<=512"), (513, "513-1024"), (1025, "1025-2048"), (2049, ">2048")),
}


def _bucket(values: np.ndarray, buckets: tuple[tuple[int, str], ...]) -> np.ndarray:
    lows = np.array([lo for lo, _ in buckets])
    labels = np.array([label for _, label in buckets], dtype=object)
    return labels[np.searchsorted(lows, values, side="right") - 1]


def _read_metadata(uri: str) -> Any:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    data = io.BytesIO(storage.read_bytes(uri))
    return pacsv.read_csv(data) if uri.lower().endswith((".csv", ".csv.gz")) else pq.read_table(data)


def _run_images(run: Run) -> Any:
    import pyarrow.dataset as pads

    if not run.image_files:
        raise InputError(f"{run.uri}: no images table; --slice-by needs the run's images/ (or num_objects)")
    return pads.dataset(run.image_files, filesystem=run.fs, format="parquet").to_table()


def image_slices(columns: list[str], run: Run, pairing: Pairing, gt: GroundTruth, metadata: str | None) -> Slices:
    """The :class:`Slices` of ``columns``, each value of each column a slice named ``COLUMN=VALUE``
    (values as text, sorted); an image without a value for a column (unpaired, or not in the metadata
    table) is in none of its slices. Raises :class:`InputError` for a column found nowhere."""
    names: list[str] = []
    members: list[np.ndarray] = []
    images = meta = None
    for column in columns:
        if column == "num_objects":
            ids = gt.image_ids
            counts = np.bincount(np.searchsorted(gt.image_ids, gt.image_id[~gt.iscrowd]), minlength=len(ids))
            values = _bucket(counts, DERIVED[column])
        else:
            images = _run_images(run) if images is None else images
            ids = pairing.map(images.column("image_id").to_numpy())
            if column == "image_size":
                sides = np.maximum(images.column("width").to_numpy(zero_copy_only=False), images.column("height").to_numpy(zero_copy_only=False))
                values = _bucket(np.nan_to_num(np.asarray(sides, dtype=np.float64), nan=-1), DERIVED[column])
                values[np.isnan(np.asarray(sides, dtype=np.float64))] = None  # an image in error has no size
            elif column in images.column_names:
                values = np.array(images.column(column).to_pylist(), dtype=object)
            else:
                meta = _metadata(metadata, column) if meta is None else meta
                if column not in meta.column_names:
                    raise InputError(
                        f"--slice-by {column}: no such column in the images table ({', '.join(images.column_names)}), "
                        f"the metadata table ({metadata or 'none given: --slice-metadata FILE'}), or derived ({', '.join(DERIVED)})"
                    )
                values = _joined(images, meta, column)
        keep = np.isin(ids, gt.image_ids) & np.array([v is not None for v in values], dtype=bool)
        ids, values = ids[keep], np.array([str(v) for v in values[keep]], dtype=object)
        for value in sorted(set(values.tolist())):
            names.append(f"{column}={value}")
            members.append(np.unique(ids[values == value]))
    return Slices(names, members)


def _metadata(uri: str | None, column: str) -> Any:
    if uri is None:
        raise InputError(
            f"--slice-by {column}: not a column of the run's images table nor derived ({', '.join(DERIVED)}); "
            f"give a metadata table with it (--slice-metadata FILE.parquet|FILE.csv, joined on image_id or uri)"
        )
    table = _read_metadata(uri)
    if "image_id" not in table.column_names and "uri" not in table.column_names:
        raise InputError(f"{uri}: a metadata table needs an image_id or a uri column to join on; it has {', '.join(table.column_names)}")
    return table


def _joined(images: Any, meta: Any, column: str) -> np.ndarray:
    """The metadata ``column`` for each row of ``images``, joined on image_id (if the table has it), else uri."""
    key = "image_id" if "image_id" in meta.column_names else "uri"
    lookup = dict(zip(meta.column(key).to_pylist(), meta.column(column).to_pylist()))
    return np.array([lookup.get(k) for k in images.column(key).to_pylist()], dtype=object)
