"""Many small images end to end on one machine: ``detbatch detect`` with the ``null`` detector over tar shards.

    .venv/bin/python benchmarks/million.py [--images 1000000] [--images-per-shard 1024] [--work /tmp/detbatch-million]
                                           [--set output.rows_per_file=1024 ...] [--json out.json]

Writes ``--images`` 32×32 PNGs of noise (256 distinct images, repeated; ~3 KiB each) into WebDataset tar shards
of ``--images-per-shard`` members (``KEY.png``), once, then runs ``detbatch detect --model null --weights none
--ray-address local`` over them (a local Ray with every CPU; ``--set`` passes config keys on), sampling every
process of the run (benchmarks/proctree.py). Reported: wall time and images/s (the command's, start-up
included, and run.json's), CPU seconds, peak private memory (RssAnon) of the driver and of each kind of Ray
process, the output's file count per table, and that its images table holds every image once (rows and
distinct uris, read back with pyarrow).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tarfile
import time
from pathlib import Path

import proctree

ROOT = Path(__file__).resolve().parent.parent


def write_shards(folder: Path, n: int, per_shard: int, distinct: int = 256) -> int:
    """``n`` PNG members (32×32 noise, ``pipeline_overhead.png_pool``) in tar shards of ``per_shard``;
    returns the number of shards."""
    from pipeline_overhead import png_pool

    shards = -(-n // per_shard)
    if folder.exists() and len(list(folder.glob("*.tar"))) == shards:
        return shards
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pool = png_pool(distinct, 32)
    for s in range(shards):
        with tarfile.open(folder / f"shard-{s:06d}.tar", "w") as tar:
            for i in range(s * per_shard, min(n, (s + 1) * per_shard)):
                data = pool[i % distinct]
                info = tarfile.TarInfo(f"{i:09d}.png")
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))
    return shards


def check_output(out: Path) -> dict:
    """Files per table, and the images table's rows, distinct uris and statuses."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    files = {t: len(list((out / t).glob("*.parquet"))) for t in ("images", "detections")}
    table = pads.dataset(str(out / "images"), format="parquet").to_table(columns=["uri", "status"])
    return {"files": files, "rows": table.num_rows, "distinct_uris": pc.count_distinct(table["uri"]).as_py(),
            "ok": int(pc.sum(pc.equal(table["status"], "ok")).as_py() or 0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1_000_000)
    p.add_argument("--images-per-shard", type=int, default=1024)
    p.add_argument("--work", default="/tmp/detbatch-million")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json")
    args = p.parse_args()
    work = Path(args.work)
    shards_dir = work / f"shards-{args.images}-{args.images_per_shard}"
    t = time.perf_counter()
    shards = write_shards(shards_dir, args.images, args.images_per_shard)
    print(f"{shards} shards ready in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "detbatch", "detect", "--input", str(shards_dir), "--output", str(out),
               "--model", "null", "--weights", "none", "--ray-address", "local",
               *[a for kv in args.set for a in ("--set", kv)]]
    usage = proctree.run_measured(command, interval=1.0, cwd=ROOT)
    if usage.returncode:
        raise SystemExit(f"detect failed ({usage.returncode})")
    run = json.loads((out / "run.json").read_text())
    result = {"images": args.images, "shards": shards, "set": args.set, "wall_s": round(usage.wall_s, 1),
              "images_per_s": round(args.images / usage.wall_s, 1), "run_json_images_per_s": run["images_per_second"],
              "run_json_wall_s": run["wall_seconds"], "cpu_s": round(usage.cpu_s, 1),
              "driver_peak_anon_mib": round(usage.root_peak_anon_mib, 1), "by_kind": usage.by_kind(),
              "largest": [{"title": p.title[:100], "peak_anon_mib": round(p.peak_anon_mib, 1), "cpu_s": round(p.cpu_s, 1)}
                          for p in sorted(usage.procs.values(), key=lambda p: -p.peak_anon_mib)[:3]],
              **check_output(out), "finished_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    print(json.dumps(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
