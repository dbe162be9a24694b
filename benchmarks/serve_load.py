"""detbatch serve under load on loopback, against a bare single-process HTTP server running the same model.

    .venv/bin/python benchmarks/serve_load.py load [--clients 1,4,16] [--seconds 20] [--json OUT.json]
    .venv/bin/python benchmarks/serve_load.py soak [--minutes 10] [--clients 4] [--json OUT.json]

``load``: for each number of concurrent clients, p50/p95/p99 latency and throughput of

- **serve**: ``detbatch serve`` on a local Ray of ``--cpus`` CPUs (``--replicas`` replicas splitting them,
  ``@serve.batch`` up to ``--max-batch-size`` within ``--batch-wait-ms``);
- **bare**: one Python process, ``http.server.ThreadingHTTPServer``, the same model through the same code
  (:class:`detbatch.serve.model.ServedModel`, detect's Detector) with ``--cpus`` torch threads, one request
  at a time through the model (no batching).

Each client posts COCO128 JPEGs (or synthetic JPEGs where COCO128 is absent) in a loop over a kept-alive
connection. Both servers are up at once and take turns at each level (``--rounds`` turns of
``--seconds``/``--rounds`` each, after a short warm-up), so that the other load of a shared machine, which
drifts by the minute, falls on both alike; a level ends early at ``--max-requests``.
The goal (issue 19): at 16 clients serve's throughput ≥ 1.5× bare's, with p99 ≤ 2× bare's p99.

``soak``: serve alone at ``--clients`` clients for ``--minutes``; every error is counted, and the resident
memory (VmRSS) of each replica and of Serve's proxy is sampled every ``--sample-s``: growth is the largest
sample after the warm-up (the first ``--warmup-minutes``) over the last sample of the warm-up (goal ≤ 1.1×).

Loopback only; every loop is bounded in count and time. The model is random-weight (``--weights none``)
unless ``--weights`` says otherwise: speed does not depend on the weights. Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COCO128 = REPO.parent / "shared" / "data" / "coco128" / "images"
NUM_IMAGES = 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_images() -> list[bytes]:
    files = sorted(COCO128.glob("*.jpg"))[:NUM_IMAGES] if COCO128.exists() else []
    if files:
        return [f.read_bytes() for f in files]
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(NUM_IMAGES):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), np.uint8)).save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def model_settings(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    return {"model": args.model, "weights": args.weights, "score_threshold": 0.05, "per_category": None,
            "detections_per_image": 100, "device": "cpu", "fp16": False, "threads": threads,
            "batch_size": args.max_batch_size}


# --- the bare server ------------------------------------------------------------------------------------


def bare_server(port: int, settings: dict[str, Any]) -> None:
    """One process: ThreadingHTTPServer, POST /detect -> the same decode and model, one request at a time."""
    from detbatch.serve.model import Item, ServedModel
    from detbatch.serve.requests import RequestError, decode_request_image

    model = ServedModel(**settings)
    lock = threading.Lock()  # one model, no batching: requests take turns

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._reply(200, {"status": "ok"})

        def do_POST(self) -> None:
            data = self.rfile.read(int(self.headers.get("content-length", 0)))
            try:
                pixels = decode_request_image(data, None)
            except RequestError as e:
                return self._reply(e.status, {"error": str(e)})
            with lock:
                answer = model.detect([Item(pixels)])[0]
            self._reply(answer.status, answer.body)

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


def bare_env() -> dict[str, str]:
    """The bare server runs with the allocator serve's replicas get from a local Ray (jemalloc, never decaying:
    detbatch.runtime.WORKER_ENV), so that the comparison is of serving, not of malloc."""
    import ray

    from detbatch.runtime import WORKER_ENV

    jemalloc = Path(ray.__file__).parent / "core" / "libjemalloc.so"  # what Ray preloads into its workers
    env = {**os.environ, "MALLOC_CONF": WORKER_ENV["MALLOC_CONF"]}
    if jemalloc.exists():
        env["LD_PRELOAD"] = str(jemalloc)
    return env


def start_bare(args: argparse.Namespace) -> tuple[str, subprocess.Popen]:
    port = free_port()
    settings = model_settings(args, args.cpus)
    proc = subprocess.Popen([sys.executable, __file__, "bare-server", str(port), json.dumps(settings)],
                            cwd=REPO, stdout=subprocess.PIPE, text=True, env=bare_env())
    line = proc.stdout.readline()  # waits for the model to load
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"the bare server did not start: {line!r}")
    return f"http://127.0.0.1:{port}", proc


# --- serve ----------------------------------------------------------------------------------------------


def start_detbatch_serve(args: argparse.Namespace) -> str:
    from detbatch.config import load_config
    from detbatch.runtime import init_ray
    from detbatch.serve import ServeConfig
    from detbatch.serve.app import start_serve

    init_ray("local", num_cpus=args.cpus)
    per_replica = args.cpus / args.replicas
    config = load_config(ServeConfig, None, {
        "model.name": args.model, "model.weights": args.weights,
        "batching.max_batch_size": args.max_batch_size, "batching.batch_wait_ms": args.batch_wait_ms,
        "replicas.num_replicas": args.replicas, "replicas.cpus_per_replica": per_replica,
        "replicas.threads_per_replica": max(1, int(per_replica)), "replicas.device": "cpu",
        "http.port": free_port(), "http.access_log": False,  # a log line per request costs the replica CPU
    })
    return start_serve(config)


def serve_pids() -> dict[str, list[int]]:
    """Process ids of the replicas and of Serve's proxy (Ray's state API)."""
    import ray
    from ray.util.state import list_actors

    # This Ray's address: a shared machine may run other Rays, and "auto" then refuses to choose.
    alive = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")],
                        limit=1000)
    return {"replica": [a.pid for a in alive if a.class_name.startswith("ServeReplica:")],
            "proxy": [a.pid for a in alive if a.class_name == "ProxyActor"]}


# --- the load -------------------------------------------------------------------------------------------


def drive(url: str, images: list[bytes], clients: int, seconds: float, max_requests: int,
          warmup_s: float) -> dict[str, Any]:
    """``clients`` threads posting in a loop; the latencies (s) and errors of the requests sent after the warm-up."""
    import requests

    start = time.monotonic()
    measure_from, deadline = start + warmup_s, start + warmup_s + seconds
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        session = requests.Session()
        i = k
        while True:
            with lock:
                if time.monotonic() >= deadline or len(latencies) + len(errors) >= max_requests:
                    return
            t0 = time.monotonic()
            try:
                r = session.post(f"{url}/detect", data=images[i % len(images)],
                                 headers={"Content-Type": "image/jpeg"}, timeout=120)
                ok, why = r.status_code == 200, f"HTTP {r.status_code}: {r.text[:200]}"
            except requests.RequestException as e:
                ok, why = False, f"{type(e).__name__}: {e}"
            t1 = time.monotonic()
            i += clients
            if t0 >= measure_from:
                with lock:
                    (latencies.append(t1 - t0) if ok else errors.append(why))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"latencies": latencies, "errors": errors, "seconds": time.monotonic() - measure_from}


def summary(clients: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    lat = np.array([x for r in runs for x in r["latencies"]]) * 1000
    errors = [e for r in runs for e in r["errors"]]
    elapsed = sum(r["seconds"] for r in runs)
    return {"clients": clients, "requests": len(lat), "errors": len(errors), "first_errors": errors[:3],
            "seconds": round(elapsed, 1), "throughput": round(len(lat) / elapsed, 2),
            **{f"p{q}_ms": round(float(np.percentile(lat, q)), 1) if len(lat) else None for q in (50, 95, 99)}}


def load(args: argparse.Namespace) -> dict[str, Any]:
    """Both servers up at once; at each level they take turns, ``--rounds`` times, so that a change in the
    machine's other load (a shared machine) falls on both alike."""
    images = load_images()
    levels = [int(c) for c in args.clients.split(",")]
    results: dict[str, Any] = {"machine": machine(), "settings": vars(args) | {"images": len(images)},
                               "bare": [], "serve": []}
    bare_url, bare = start_bare(args)
    try:
        urls = {"bare": bare_url, "serve": start_detbatch_serve(args)}
        per_round = args.seconds / args.rounds
        for clients in levels:
            runs: dict[str, list[dict[str, Any]]] = {"bare": [], "serve": []}
            for _ in range(args.rounds):
                for name, url in urls.items():
                    runs[name].append(drive(url, images, clients, per_round, args.max_requests // args.rounds,
                                            args.warmup_s))
            for name in urls:
                row = summary(clients, runs[name])
                results[name].append(row)
                print(f"{name:5s} {row['clients']:3d} clients: {row['throughput']:7.2f} req/s, p50 {row['p50_ms']} ms, "
                      f"p95 {row['p95_ms']} ms, p99 {row['p99_ms']} ms, {row['requests']} ok, {row['errors']} errors",
                      flush=True)
    finally:
        bare.kill()
        bare.wait()
    top = {name: results[name][-1] for name in ("bare", "serve")}
    if top["bare"]["throughput"] and top["bare"]["p99_ms"]:
        ratio = top["serve"]["throughput"] / top["bare"]["throughput"]
        p99 = top["serve"]["p99_ms"] / top["bare"]["p99_ms"]
        results["goal"] = {"throughput_ratio": round(ratio, 2), "p99_ratio": round(p99, 2),
                           "met": ratio >= 1.5 and p99 <= 2.0}
        print(f"at {levels[-1]} clients: serve/bare throughput {ratio:.2f}x (goal >= 1.5), p99 {p99:.2f}x (goal <= 2)")
    results["machine"]["load_average_at_end"] = os.getloadavg()
    return results


def soak(args: argparse.Namespace) -> dict[str, Any]:
    from detbatch.runtime import proc_status_mib

    images = load_images()
    url = start_detbatch_serve(args)
    pids = serve_pids()
    samples: list[dict[str, Any]] = []
    stats: list[dict[str, Any]] = []
    stop = threading.Event()

    def sampler() -> None:
        started = time.monotonic()
        while not stop.wait(args.sample_s):
            rss = {f"{kind}{i}": proc_status_mib("VmRSS", pid) for kind, ps in pids.items() for i, pid in enumerate(ps)}
            samples.append({"t_s": round(time.monotonic() - started), **rss})
            print(f"  {samples[-1]}", flush=True)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    total_s = args.minutes * 60
    chunk = 60.0  # one load level a minute: errors and throughput as they go
    t_end = time.monotonic() + total_s
    while time.monotonic() < t_end:
        stats.append(summary(args.clients, [drive(url, images, args.clients, min(chunk, t_end - time.monotonic()),
                                                   10**9, 0.0)]))
        print(f"soak: {stats[-1]['throughput']} req/s, p99 {stats[-1]['p99_ms']} ms, {stats[-1]['errors']} errors",
              flush=True)
    stop.set()
    thread.join()
    warm = [s for s in samples if s["t_s"] <= args.warmup_minutes * 60]
    after = [s for s in samples if s["t_s"] > args.warmup_minutes * 60]
    growth = {}
    if warm and after:
        for key in (k for k in samples[0] if k != "t_s"):
            growth[key] = round(max(s[key] for s in after) / warm[-1][key], 3)
    result = {"machine": machine(), "settings": vars(args) | {"images": len(images)},
              "requests": sum(s["requests"] for s in stats), "errors": sum(s["errors"] for s in stats),
              "throughput": round(sum(s["requests"] for s in stats) / total_s, 2),
              "p99_ms_worst_minute": max(s["p99_ms"] or 0 for s in stats), "rss_mib": samples, "growth": growth}
    print(f"soak: {result['requests']} requests, {result['errors']} errors, growth after warm-up {growth}")
    return result


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_average_at_start": os.getloadavg()}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "bare-server":
        return bare_server(int(sys.argv[2]), json.loads(sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["load", "soak"])
    parser.add_argument("--model", default="ssdlite320_mobilenet_v3_large")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs for the model: Ray's, and the bare server's threads")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--clients", default=None, help="load: levels, comma-separated (1,4,16); soak: one (4)")
    parser.add_argument("--seconds", type=float, default=24.0, help="load: measured seconds per level and server")
    parser.add_argument("--rounds", type=int, default=4, help="load: turns each server takes at each level")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="load: seconds of each turn not measured")
    parser.add_argument("--max-requests", type=int, default=2000, help="load: measured requests per level at most")
    parser.add_argument("--minutes", type=float, default=10.0, help="soak: how long")
    parser.add_argument("--warmup-minutes", type=float, default=1.0, help="soak: memory growth counts after this")
    parser.add_argument("--sample-s", type=float, default=15.0, help="soak: memory sample period")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    args.clients = args.clients or ("1,4,16" if args.mode == "load" else "4")
    if args.mode == "soak":
        args.clients = int(args.clients)
    results = load(args) if args.mode == "load" else soak(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
