"""Listing an S3 prefix of many objects: one sequential ``fs.find`` vs detbatch's parallel listing in Ray tasks.

    .venv/bin/python benchmarks/s3_listing.py [--objects 100000] [--prefixes 100] [--repeat 2] [--json out.json]

A moto S3 server (``ThreadedMotoServer``, in this process, on 127.0.0.1) gets ``--objects`` empty objects
under ``images/pNNN/`` in ``--prefixes`` sub-prefixes (``--http-uploads`` of them PUT by 32 threads, the rest
put into moto's in-process backend: see :func:`upload`). Then, ``--repeat`` times each:
  - sequential: ``fs.find(prefix)`` on the driver (ListObjectsV2 pages of 1,000 keys, one after another);
  - parallel: :func:`detbatch.detect.listing.find` with a local Ray (``address="local"``, ``--cpus`` CPUs):
    one delimiter listing here, then one Ray task per sub-prefix;
and once each, the whole :func:`detbatch.detect.units.list_input` (sorting, versions) both ways. Both give the
same files (checked). Ray's start is timed apart; the first parallel run includes starting its workers.

moto answers each ListObjectsV2 by scanning the bucket's keys, in this process and under its GIL, with no
network latency: it measures the client side and moto, not S3's ~50 ms a page (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upload(endpoint: str, bucket: str, objects: int, prefixes: int, http: int) -> float:
    """Make the bucket and its objects: the first ``http`` by PUT requests from 32 threads, the rest put
    straight into the server's in-process moto backend (HTTP PUTs ran at ~150 objects/s on the loaded
    dev-2c: 11 min for 100k; what is listed is the same)."""
    import boto3
    from botocore.config import Config
    from moto.s3.models import s3_backends

    client = boto3.client("s3", endpoint_url=endpoint, config=Config(max_pool_connections=32))
    client.create_bucket(Bucket=bucket)
    keys = [f"images/p{i % prefixes:03d}/{i:07d}.jpg" for i in range(objects)]
    started = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=b""), keys[:http]))
    partition, account = s3_backends.bucket_accounts[bucket]
    backend = s3_backends[account][partition]
    for key in keys[http:]:
        backend.put_object(bucket, key, b"")
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=int, default=100_000)
    p.add_argument("--prefixes", type=int, default=100)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--http-uploads", type=int, default=2000, help="objects uploaded by PUT requests (the rest: "
                   "into moto's backend directly)")
    p.add_argument("--json")
    args = p.parse_args()

    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # Before Ray starts: its workers inherit these.
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    import ray

    from detbatch import storage
    from detbatch.detect import listing, units

    bucket, result = "scale-listing", {"objects": args.objects, "prefixes": args.prefixes}
    try:
        result["upload_s"] = round(upload(endpoint, bucket, args.objects, args.prefixes, args.http_uploads), 1)
        print(f"uploaded {args.objects:,} objects in {result['upload_s']} s", flush=True)
        uri = f"s3://{bucket}/images"
        fs, path = storage.resolve(uri)

        def timed(fn):
            fs.invalidate_cache()
            t = time.perf_counter()
            out = fn()
            return time.perf_counter() - t, out

        seq = [timed(lambda: fs.find(path, detail=True)) for _ in range(args.repeat)]
        t = time.perf_counter()
        ray.init(address="local", num_cpus=args.cpus, logging_level="WARNING")
        result["ray_init_s"] = round(time.perf_counter() - t, 2)
        par = [timed(lambda: listing.find(fs, path, parallel=True)) for _ in range(args.repeat)]
        assert sorted(seq[0][1]) == sorted(par[-1][1]) and len(seq[0][1]) == args.objects, "listings differ"
        assert all(seq[0][1][k]["size"] == par[-1][1][k]["size"] for k in seq[0][1])
        result["sequential_find_s"] = [round(s, 2) for s, _ in seq]
        result["parallel_find_s"] = [round(s, 2) for s, _ in par]
        in_seq = timed(lambda: units.list_input(uri, "images", parallel=False))
        in_par = timed(lambda: units.list_input(uri, "images", parallel=True))
        assert in_seq[1].digest == in_par[1].digest and in_seq[1].content_digest == in_par[1].content_digest
        result["list_input_sequential_s"] = round(in_seq[0], 2)
        result["list_input_parallel_s"] = round(in_par[0], 2)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        server.stop()
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
