"""The detector actor's heap in one process: USS over repeated passes of COCO128, then after malloc_trim.

    .venv/bin/python benchmarks/detector_memory.py [--passes 4] [--threads 2] [--batch-size 4]

Runs :class:`detbatch.detect.detector.Detector` (``fasterrcnn_mobilenet_v3_large_320_fpn``, random init, CPU)
over the decoded COCO128 images ``--passes`` times, and prints the process's USS after loading, after
each pass, and after glibc's ``malloc_trim(0)``. Flat figures after the first passes mean the memory is
bounded by the model and the image shapes, not by how many images go through; the trim shows how much
of it is freed memory the allocator keeps. Needs psutil (``pip install -e ".[bench]"``); glibc only.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path

COCO128 = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128" / "images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--model", default="fasterrcnn_mobilenet_v3_large_320_fpn")
    args = parser.parse_args()
    if not COCO128.exists():
        sys.exit(f"COCO128 not found at {COCO128}")

    import numpy as np
    import psutil
    from PIL import Image

    from detbatch.detect.detector import Detector

    images = [np.asarray(Image.open(f).convert("RGB")) for f in sorted(COCO128.glob("*.jpg"))]
    detector = Detector(model=args.model, weights="none", score_threshold=0.05, detections_per_image=100,
                        device="cpu", threads=args.threads, batch_size=args.batch_size)  # fmt: skip
    me = psutil.Process()

    def uss_mb() -> int:
        return me.memory_full_info().uss >> 20

    print(f"{args.model}, {args.threads} threads, batch {args.batch_size}, {len(images)} images per pass")
    print(f"  after loading      : {uss_mb():6d} MB USS")
    for i in range(args.passes):
        started = time.perf_counter()
        for start in range(0, len(images), args.batch_size):
            detector.predict(images[start : start + args.batch_size])
        print(f"  after pass {i + 1}       : {uss_mb():6d} MB USS ({time.perf_counter() - started:.0f} s)")
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    print(f"  after malloc_trim(0): {uss_mb():6d} MB USS")


if __name__ == "__main__":
    main()
