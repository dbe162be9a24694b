"""``detbatch serve``."""

from __future__ import annotations

import argparse

from detbatch.cli.common import int_or_auto, load_job_config, score_or_uri


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="real-time detection over HTTP (Ray Serve): POST an image to /detect, get its detections",
        description="Serve a detector over HTTP on Ray Serve: POST /detect (an image body, or JSON {\"uri\": ...}), "
        "GET /healthz, GET /model. Runs until Ctrl-C, which deletes the application (--detach: deploy and return).",
    )
    p.add_argument("--config", help="YAML config (see configs/serve.yaml); flags override it")
    p.add_argument("--weights", help="DEFAULT, a torchvision weights name, none, or a checkpoint URI")
    p.add_argument("--model", help="detector name (see `detbatch models`)")
    p.add_argument("--score-threshold", type=score_or_uri, help="the served model's threshold, or a thresholds.json "
                   "of `detbatch evaluate`; a request may ask for a higher one, never a lower one")
    p.add_argument("--host", help="where the HTTP proxies listen (default 127.0.0.1; 0.0.0.0 for other machines)")
    p.add_argument("--port", type=int, help="HTTP port (default 8000)")
    p.add_argument("--replicas", type=int_or_auto, help="replicas of the model: a number, or auto (autoscaling)")
    p.add_argument("--max-batch-size", type=int, help="requests a replica runs through the model at once")
    p.add_argument("--batch-wait-ms", type=float, help="how long a batch waits for more requests, at most")
    p.add_argument("--allow-uri", action="append", metavar="PREFIX",
                   help="JSON {\"uri\": ...} requests may name images under PREFIX (repeatable; default: none)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"])
    p.add_argument("--ray-address", help="Ray cluster to deploy on (default: the job's, else a local one)")
    p.add_argument("--detach", action="store_true", help="deploy and return; the application keeps running")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override any config key")
    p.set_defaults(run=_run_serve)

SERVE_FLAGS = {
    "model.name": "model",
    "model.weights": "weights",
    "model.score_threshold": "score_threshold",
    "http.host": "host",
    "http.port": "port",
    "replicas.num_replicas": "replicas",
    "replicas.device": "device",
    "batching.max_batch_size": "max_batch_size",
    "batching.batch_wait_ms": "batch_wait_ms",
    "input.uri_prefixes": "allow_uri",
    "ray.address": "ray_address",
}

def _run_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from detbatch.serve import ServeConfig
    from detbatch.serve.app import start_serve, stop_serve

    config = load_job_config(ServeConfig, args, SERVE_FLAGS)
    url = start_serve(config)
    print(f"serve: {config.model.name} ({config.model.weights}) at {url}: POST {url}/detect, GET {url}/healthz, "
          f"GET {url}/model")
    if args.detach:
        print("  the application keeps running on the cluster; `serve status` shows it, `serve shutdown` stops it")
        return 0
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())  # `ray job stop`, `kill`: stop as Ctrl-C does
    print("  Ctrl-C stops it")
    try:
        while not stopped.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    stop_serve()
    print("serve: stopped")
    return 0
