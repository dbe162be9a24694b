"""A detect writer in a process of its own, for crash and fencing tests: ``python -m tests.helpers.writer
VALUES_JSON [--generation G] [--pace S] [--one-image-calls]``.

It does what a detect run does, without Ray: opens the output as the driver does (location and ownership
checks, the lease, state.json: :func:`detbatch.detect.output.open_output`), then, unit by unit, reads and
decodes the images (``detect.read``, ``detect.decode``) and calls a real :class:`~detbatch.detect.detector.
Detector`, which commits with :func:`~detbatch.detect.sink.write_parts`. So ``DETBATCH_FAILPOINTS`` in its
environment kills it at a failpoint of the real commit path, a few seconds after it starts (a Ray worker
would need a job of its own and restart the actor the failpoint killed).

``--generation G``: a fenced-off zombie. It takes no lease and writes as generation ``G``, as an actor of a
killed driver would; it stops with exit status 3 at the first :class:`~detbatch.detect.lease.LeaseLost`.
``--pace S`` sleeps S seconds before each call; ``--one-image-calls`` commits each image as a part of its own.
``inference.decode: gpu`` in the values leaves plain JPEGs undecoded for the detector (which decodes them on
CPU here); ``inference.overlap_commit: true`` runs two calls at once on one detector, in two threads, as
the pool's actors do with ``max_concurrent_calls_per_actor=2``.

stdout: ``committed UNIT START STOP`` after each call, flushed, so that a test can act between parts.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from detbatch.config import load_config
from detbatch.detect import lease, read, sink
from detbatch.detect.config import DetectConfig
from detbatch.detect.decode import decode_batch
from detbatch.detect.output import open_output
from detbatch.detect.units import InputListing, list_input, plan_units

# Exit status of a zombie writer that found itself fenced off.
FENCED_EXIT_CODE = 3


def calls(listing: InputListing, images_per_unit: int, log: sink.CommitLog, one_image_calls: bool = False,
          units: set[int] | None = None, keep_jpeg: bool = False) -> Iterator[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """The detector calls a run over ``listing`` makes, after what ``log`` holds: ``(unit, batch)``, the batch
    as Ray Data hands it to the pool (decoded rows, numpy columns), one per unit or per image."""
    for unit in plan_units(listing, images_per_unit, None):
        if unit["unit"] in log.finished or units is not None and unit["unit"] not in units:
            continue
        rows = list(read.read_unit(unit, None, log.skip(unit["unit"])))
        for call in ([r] for r in rows) if one_image_calls else [rows]:
            decoded = decode_batch(pa.Table.from_pylist(call, schema=read.READ_SCHEMA).to_pydict(), keep_jpeg=keep_jpeg)
            yield unit, {name: decoded[name].to_numpy(zero_copy_only=False) for name in decoded.column_names}


def detector(config: DetectConfig, generation: int) -> Any:
    """The pool's actor class, built as the driver configures it (on CPU, one thread)."""
    from detbatch.detect.detector import Detector

    m = config.model
    return Detector(model=m.name, weights=m.weights, score_threshold=m.score_threshold,
                    detections_per_image=m.detections_per_image, device="cpu", threads=1,
                    batch_size=config.inference.batch_size, output=config.output.uri, generation=generation,
                    overlap=bool(config.inference.overlap_commit), max_pixels=config.input.max_pixels)


def main(argv: list[str]) -> int:
    values, flags = json.loads(argv[0]), argv[1:]
    generation = int(flags[flags.index("--generation") + 1]) if "--generation" in flags else None
    pace = float(flags[flags.index("--pace") + 1]) if "--pace" in flags else 0.0
    # No heartbeat while it runs: each heartbeat is a write, a pass of storage.after_temporary_write, and
    # the tests count passes (the lease, state.json, then two per part).
    lease.HEARTBEAT_S = 3600.0
    config = load_config(DetectConfig, None, values)
    listing = list_input(config.input.uri, config.input.format)
    held = None
    if generation is None:
        opened = open_output(config, listing)
        config, held, generation = opened.config, opened.lease, opened.lease.generation
    log = sink.read_commit_log(config.output.uri)
    images_per_unit = config.input.images_per_unit or config.output.rows_per_file
    todo = calls(listing, images_per_unit, log, "--one-image-calls" in flags, keep_jpeg=config.inference.decode == "gpu")
    model, started = None, threading.Lock()

    def call(unit: dict[str, Any], batch: dict[str, np.ndarray]) -> None:
        nonlocal model
        time.sleep(pace)
        with started:  # torch is imported only now: a writer that dies before its first part is quick
            model = model or detector(config, generation)
        model(batch)
        print("committed", unit["unit"], batch["index"][0], batch["index"][-1] + 1, flush=True)

    try:
        if config.inference.overlap_commit:
            with ThreadPoolExecutor(2) as pool:  # results in order: the first LeaseLost is raised here
                for done in [pool.submit(call, unit, batch) for unit, batch in todo]:
                    done.result()
        else:
            for unit, batch in todo:
                call(unit, batch)
    except lease.LeaseLost as e:
        print(f"fenced: {e}", file=sys.stderr, flush=True)
        return FENCED_EXIT_CODE
    if held is not None:
        held.release()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
