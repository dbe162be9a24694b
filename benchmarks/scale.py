"""Driver cost of planning a detect run at scale: time and peak memory at 1M, 10M and 100M inputs.

    PYTHONPATH=. .venv/bin/python benchmarks/scale.py [--sizes 1000000 10000000 100000000] [--cases index images]
                                         [--index-files 100] [--work /tmp/detbatch-scale] [--json out.json]

Issue 14's other scale benchmarks: ``s3_listing.py`` (sequential vs parallel listing of a moto prefix),
``pipeline_overhead.py`` (CPU-ms per image against a Ray Data peer), ``million.py`` (many images end to end).

Each case runs in a fresh process (so that its peak is its own), with a local Ray of 2 CPUs started before
the baseline, the driver measured alone; both end by building the stream's input as the run does
(``stream.read_and_decode``, not executed: a block per unit up to 1,024 units, else per plan row):
  - index: a synthetic Parquet index (``--index-files`` files of N / files rows of ``uri`` + ``image_id``,
    row groups of 64k rows, written once under --work) is listed (``list_input``), its row counts read from
    the footers, and planned (``plan_rows`` -> ``plan_table``: a plan row per 16 units of an index file, cut into units
    of 256 rows by the stream); the plan is written as Parquet (its size reported), and the unit numbers
    the driver derives from it to find what is left (``plan.unit_ids``, 16 B per unit) are made too.
  - images: N virtual image files under N / 100,000 sub-prefixes (``benchmarks/virtual_fs.py``, an fsspec
    filesystem that lists files it makes up) listed as detect lists them, into the output's listing
    parts (``plan.list_into``: a local Ray of 2 CPUs, a task per sub-prefix, each writing its files'
    parts), then planned (``plan.part_rows`` -> ``plan_table``: a plan row per 16 units of a part); the parts' bytes
    are reported. Ray's start is before the baseline, the tasks' work is on the clock.
Reported: wall and CPU seconds of the case (the driver's own CPU), the process's private memory before the case (imports: detbatch,
pyarrow, ray) and its peak during it (RssAnon, sampled every 50 ms by ``detbatch.runtime.PrivateMemoryPeak``),
VmHWM, plan rows and units, the plan's bytes as Parquet and in Arrow.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROW_GROUP_ROWS = 65_536
IMAGES_PER_UNIT = 256


def write_index(folder: Path, n: int, files: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    def padded(values: "pa.Array", width: int) -> "pa.Array":
        return pc.utf8_lpad(pc.cast(values, pa.string()), width, padding="0")

    folder.mkdir(parents=True, exist_ok=True)
    per_file = n // files
    for f in range(files):
        start = f * per_file
        ids = pa.array(np.arange(start, start + per_file, dtype=np.int64))
        # s3://my-bucket/images/{i // 10000:05d}/{i:012d}.jpg, built in Arrow (100M Python strings take ~20 min here)
        uris = pc.binary_join_element_wise("s3://my-bucket/images/", padded(pc.divide(ids, 10000), 5), "/",
                                           padded(ids, 12), ".jpg", "")
        pq.write_table(pa.table({"uri": uris, "image_id": ids}), folder / f"index-{f:05d}.parquet",
                       row_group_size=ROW_GROUP_ROWS, compression="zstd")


def run_case(kind: str, n: int, work: Path) -> dict:
    """One case, in this process."""
    import pyarrow.parquet as pq
    import ray  # noqa: F401  (imported by the index's row counts: part of the baseline, not of the case)

    from detbatch.detect import plan, units
    from detbatch.detect.output import LISTING_DIR
    from detbatch.runtime import PrivateMemoryPeak, proc_status_mib

    from detbatch.detect.stream import read_and_decode

    config = _virtual_images(n, work)  # Ray up in both cases: the index's row counts and the stream's input
    baseline = proc_status_mib("RssAnon") or 0.0
    wall, cpu = time.perf_counter(), time.process_time()
    with PrivateMemoryPeak() as peak:
        if kind == "index":
            listing = units.list_input(str(work / f"index-{n}"), "index", parallel=False)
            summary = listing.summary()
            table = plan.plan_table(units.plan_rows(listing, IMAGES_PER_UNIT, None), summary)
        else:
            listed = plan.list_into(config, LISTING_DIR, None)
            summary = listed.summary
            table = plan.plan_table(plan.part_rows(listed.parts, IMAGES_PER_UNIT), summary,
                                    [name for name, _ in listed.parts])
            assert listed.summary.num_inputs == n, listed.summary
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        ids, _ = plan.unit_ids(table)  # what the driver's stream holds of the units: their numbers
        # The stream's input, as the run builds it (not executed): a block per unit up to
        # stream.DRIVER_UNITS units (1,024), else a block per plan row.
        stream_input = read_and_decode(table, summary, None, {}, 1.0, output=config.output.uri)
    extra = {}
    if kind == "images":
        out = work / f"out-images-{n}" / LISTING_DIR
        extra = {"parts": len(listed.parts), "parts_mib": round(sum(f.stat().st_size for f in out.iterdir()) / 2**20, 1)}
    del stream_input
    return {**extra, "case": kind, "inputs": n, "wall_s": round(time.perf_counter() - wall, 2),
            "cpu_s": round(time.process_time() - cpu, 2), "baseline_private_mib": round(baseline, 1),
            "peak_private_mib": round(peak.peak_mib, 1),
            "vm_hwm_mib": round(proc_status_mib("VmHWM") or 0.0, 1), "plan_rows": table.num_rows, "units": len(ids),
            "plan_mib": round(len(buf.getvalue()) / 2**20, 2), "plan_arrow_mib": round(table.nbytes / 2**20, 2)}


def _virtual_images(n: int, work: Path) -> "object":
    """Ray up (2 CPUs, the virtual filesystem in every worker) and a detect config over N virtual files."""
    import shutil

    import ray

    from benchmarks.virtual_fs import register
    from detbatch.config import load_config
    from detbatch.detect.config import DetectConfig

    register()
    repo = str(Path(__file__).resolve().parents[1])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": "benchmarks.virtual_fs.register", "env_vars": {"PYTHONPATH": repo}})
    out = work / f"out-images-{n}"
    shutil.rmtree(out, ignore_errors=True)
    prefixes = max(1, n // 100_000)  # (the index case lists no virtual file)
    return load_config(DetectConfig, None, {"input.uri": f"virtual://{n}/{prefixes}", "output.uri": str(out)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--cases", nargs="+", default=["index", "images"])
    p.add_argument("--index-files", type=int, default=100)
    p.add_argument("--work", default="/tmp/detbatch-scale")
    p.add_argument("--json")
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # KIND N: run one case here
    args = p.parse_args()
    work = Path(args.work)
    if args.one:
        print(json.dumps(run_case(args.one[0], int(args.one[1]), work)))
        return
    results = []
    for n in args.sizes:
        for kind in args.cases:
            if kind == "index" and not (work / f"index-{n}").exists():
                t = time.perf_counter()
                write_index(work / f"index-{n}", n, args.index_files)
                print(f"wrote the {n:,}-row index in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            out = subprocess.run([sys.executable, __file__, "--work", str(work), "--one", kind, str(n)],
                                 check=True, capture_output=True, text=True, env=os.environ).stdout
            results.append(json.loads([line for line in out.splitlines() if line.startswith("{")][-1]))
            print(json.dumps(results[-1]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
