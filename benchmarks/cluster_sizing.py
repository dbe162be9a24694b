"""The per-image costs that size a detect cluster (docs/scaling.md): decode, driver memory, output bytes.

    .venv/bin/python benchmarks/cluster_sizing.py [--uris 200000]

All on one CPU core, no Ray, timed in CPU seconds of this process (time.process_time), so that the
numbers hold on a busy machine, are per core, and add up across a cluster:
  - decode: detbatch's decode (PIL, RGB) of COCO128's JPEGs from memory: images/s per core, encoded and
    decoded bytes per image (decoded bytes are what the object store carries from decode to the GPU);
  - driver: bytes of driver memory per listed image (the listing plus the units handed to Ray Data), and
    the driver's planning time per million images (ids, digest);
  - output: zstd Parquet bytes per detection row and per image row, for one actor call of 512 images
    with 30 detections each (random boxes and scores: an upper bound, real ones compress a bit better).
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np

COCO128 = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128" / "images"


def measure_decode(repeats: int = 3) -> dict:
    from detbatch.detect.decode import decode_image

    blobs = [p.read_bytes() for p in sorted(COCO128.glob("*.jpg"))]
    decoded = [decode_image(b)[0] for b in blobs]  # warm-up, and the decoded sizes
    start = time.process_time()
    for _ in range(repeats):
        for b in blobs:
            decode_image(b)
    seconds = (time.process_time() - start) / (repeats * len(blobs))
    return {
        "images": len(blobs),
        "decode_images_per_s_per_core": round(1 / seconds, 1),
        "encoded_kib_per_image": round(np.mean([len(b) for b in blobs]) / 1024, 1),
        "decoded_mib_per_image": round(np.mean([d.nbytes for d in decoded]) / 2**20, 3),
    }


def measure_driver(n: int, images_per_unit: int = 1024) -> dict:
    from detbatch.detect.units import InputListing, plan_units

    tracemalloc.start()
    uris = tuple(f"s3://my-bucket/images/2026/{i // 10000:04d}/{i:012d}.jpg" for i in range(n))
    listing = InputListing(kind="images", root="s3://my-bucket/images", uris=uris)
    listing_bytes = tracemalloc.get_traced_memory()[0]
    units = plan_units(listing, images_per_unit, None)
    units_bytes = tracemalloc.get_traced_memory()[0] - listing_bytes
    tracemalloc.stop()
    del units
    start = time.process_time()
    units = plan_units(listing, images_per_unit, None)
    plan_s = time.process_time() - start
    start = time.process_time()
    listing.digest  # noqa: B018 - the fingerprint a rerun compares
    digest_s = time.process_time() - start
    return {
        "uris": n,
        "listing_bytes_per_image": round(listing_bytes / n),
        "units_bytes_per_image": round(units_bytes / n),
        "plan_seconds_per_million": round(plan_s * 1e6 / n, 1),
        "digest_seconds_per_million": round(digest_s * 1e6 / n, 2),
        "units": len(units),
    }


def measure_output(images: int = 512, per_image: int = 30) -> dict:
    import pyarrow as pa

    from detbatch.detect.sink import DETECTIONS_SCHEMA, IMAGES_SCHEMA, _parquet_bytes

    rng = np.random.default_rng(0)
    n = images * per_image
    image_ids = rng.integers(0, 2**62, images)
    uris = [f"s3://my-bucket/images/2026/0001/{i:012d}.jpg" for i in range(images)]
    xy = rng.uniform(0, 600, (n, 2)).astype(np.float32)
    wh = rng.uniform(4, 200, (n, 2)).astype(np.float32)
    names = ["person", "car", "chair", "cup", "dog", "bottle", "book", "bird"]
    cats = rng.integers(0, len(names), n)
    detections = pa.table(
        {
            "image_id": np.repeat(image_ids, per_image),
            "uri": np.repeat(uris, per_image),
            "category_id": (cats + 1).astype(np.int32),
            "category": [names[c] for c in cats],
            "score": rng.uniform(0.05, 1, n).astype(np.float32),
            "x_min": xy[:, 0], "y_min": xy[:, 1], "x_max": xy[:, 0] + wh[:, 0], "y_max": xy[:, 1] + wh[:, 1],
        },
        schema=DETECTIONS_SCHEMA,
    )
    image_rows = pa.table(
        {
            "image_id": image_ids, "uri": uris, "width": np.full(images, 640, np.int32),
            "height": np.full(images, 480, np.int32), "num_detections": np.full(images, per_image, np.int32),
            "status": ["ok"] * images, "error": [None] * images,
        },
        schema=IMAGES_SCHEMA,
    )
    det_bytes, img_bytes = len(_parquet_bytes(detections)), len(_parquet_bytes(image_rows))
    return {
        "call_images": images,
        "detections_per_image": per_image,
        "detections_file_kib": round(det_bytes / 1024, 1),
        "images_file_kib": round(img_bytes / 1024, 1),
        "bytes_per_detection": round(det_bytes / n, 1),
        "bytes_per_image_row": round(img_bytes / images, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uris", type=int, default=200_000, help="listing size for the driver measurement")
    args = parser.parse_args()
    print(json.dumps({"decode": measure_decode(), "driver": measure_driver(args.uris), "output": measure_output()}, indent=2))


if __name__ == "__main__":
    main()
