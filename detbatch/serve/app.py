"""The Ray Serve application: HTTP routes, dynamic batching, replicas, and how it is deployed.

Routes (docs/serve.md):

- ``POST /detect``: an image body, or JSON ``{"uri": ...}`` -> ``{"width", "height", "detections": [...]}``,
  each detection a ``detections`` row's fields (``category_id``, ``category``, ``score``, ``x_min`` ...
  ``y_max``: xyxy pixels of the original image); header ``x-detbatch-batch-size``: the requests the model
  ran together with this one;
- ``GET /healthz``: 200 while the replica that answers has its model;
- ``GET /model``: name, weights, categories, thresholds, device, versions.

Each replica loads the model once (:class:`~detbatch.serve.model.ServedModel`, detect's Detector) and runs
concurrent requests together through ``@serve.batch``, up to ``batching.max_batch_size`` and waiting at most
``batching.batch_wait_ms``. Reading and decoding a request, and the model, run in threads, so that the
replica's event loop keeps taking requests while a batch runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from ray import serve

from detbatch.serve.config import APP_NAME, ServeConfig
from detbatch.serve.model import Answer, Item, ServedModel
from detbatch.serve.requests import (
    JSON_TYPE,
    RequestError,
    check_length,
    check_threshold,
    decode_request_image,
    parse_json,
    parse_query,
    read_body,
    read_uri,
)

if TYPE_CHECKING:
    from ray.serve import Application
    from starlette.requests import Request
    from starlette.responses import Response

logger = logging.getLogger(__name__)

BATCH_SIZE_HEADER = "x-detbatch-batch-size"


@serve.deployment(name="Detector")
class DetectorDeployment:
    """One replica: the model, loaded once, and the routes (see the module docstring)."""

    def __init__(self, settings: dict[str, Any], limits: dict[str, Any], batching: dict[str, Any]):
        self.model = ServedModel(**settings)
        self.limits = limits
        self.detect_batch.set_max_batch_size(batching["max_batch_size"])
        self.detect_batch.set_batch_wait_timeout_s(batching["batch_wait_ms"] / 1000)
        self.routes = {("POST", "/detect"): self.detect, ("GET", "/healthz"): self.healthz,
                       ("GET", "/model"): self.describe}

    async def __call__(self, request: "Request") -> "Response":
        from starlette.responses import JSONResponse

        route = self.routes.get((request.method, request.url.path))
        if route is None:
            known = ", ".join(f"{m} {p}" for m, p in self.routes)
            paths = {p for _, p in self.routes}
            status = 405 if request.url.path in paths else 404
            return JSONResponse({"error": f"no route {request.method} {request.url.path}; known: {known}"}, status)
        return await route(request)

    async def healthz(self, request: "Request") -> "Response":
        from starlette.responses import JSONResponse

        return JSONResponse({"status": "ok", "replica": serve.get_replica_context().replica_tag})

    async def describe(self, request: "Request") -> "Response":
        from starlette.responses import JSONResponse

        return JSONResponse(self.model.info())

    async def detect(self, request: "Request") -> "Response":
        from starlette.responses import JSONResponse

        started = time.perf_counter()
        try:
            item = await self._item(request)
        except RequestError as e:
            return JSONResponse({"error": str(e)}, e.status)
        answer, batch_size = await self.detect_batch(item)
        logger.debug("detect: %d in %.1f ms, batch of %d", answer.status, 1e3 * (time.perf_counter() - started),
                     batch_size)
        return JSONResponse(answer.body, answer.status, headers={BATCH_SIZE_HEADER: str(batch_size)})

    async def _item(self, request: "Request") -> Item:
        """The request read, checked and decoded, or the :class:`RequestError` that answers it."""
        max_bytes = self.limits["max_bytes"]
        check_length(request.headers.get("content-length"), max_bytes)
        body = await read_body(request.stream(), max_bytes)
        if request.headers.get("content-type", "").split(";")[0].strip().lower() == JSON_TYPE:
            if request.query_params:
                raise RequestError(422, f"query parameters {sorted(request.query_params)} with a JSON body: give "
                                        f"the options in the JSON object")
            options = parse_json(body)
            body = await asyncio.to_thread(read_uri, options.uri, self.limits["uri_prefixes"], max_bytes)
        else:
            options = parse_query(request.query_params)
        check_threshold(options, self.model.floor)
        pixels = await asyncio.to_thread(decode_request_image, body, self.limits["max_pixels"])
        return Item(pixels, options.score_threshold, options.uri)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)  # both set from the config in __init__
    async def detect_batch(self, items: list[Item]) -> list[tuple[Answer, int]]:
        answers = await asyncio.to_thread(self.model.detect, items)
        return [(answer, len(items)) for answer in answers]


def deployment_settings(config: ServeConfig) -> dict[str, Any]:
    """The replicas' :class:`ServedModel` settings: detect's Detector arguments, decided here once."""
    import ray

    from detbatch.config import ConfigError
    from detbatch.detect.thresholds import parse_score_threshold
    from detbatch.runtime import init_ray

    init_ray(config.ray.address)  # connected already, except under `serve run` before its first deploy
    rep = config.replicas
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    if rep.device == "cuda" and not has_gpu:
        raise ConfigError("replicas.device is 'cuda' but the Ray cluster has no GPU; use device: auto or cpu")
    use_gpu = rep.device == "cuda" or (rep.device == "auto" and has_gpu)
    thresholds = parse_score_threshold(config.model.score_threshold)  # a thresholds.json is read here, once
    scores = thresholds.fingerprint()
    return {
        "model": config.model.name,
        "weights": config.model.weights,
        "score_threshold": thresholds.floor,
        "per_category": scores if isinstance(scores, dict) else None,
        "detections_per_image": config.model.detections_per_image,
        "device": "cuda" if use_gpu else "cpu",
        "fp16": rep.fp16,
        "threads": rep.threads_per_replica or max(1, int(rep.cpus_per_replica)),
        "batch_size": config.batching.max_batch_size,
    }


def build_app(config: ServeConfig) -> "Application":
    """The application ``config`` describes, bound and ready for ``serve.run`` (Ray must be connected)."""
    from detbatch.models import check_weights

    check_weights(config.model.name, config.model.weights)  # a bad name or a missing checkpoint: now, not per replica
    settings = deployment_settings(config)
    rep = config.replicas
    actor_options: dict[str, Any] = {"num_cpus": rep.cpus_per_replica}
    if settings["device"] == "cuda":
        actor_options["num_gpus"] = rep.gpus_per_replica
    if rep.resources:
        actor_options["resources"] = dict(rep.resources)
    if rep.env_vars:
        actor_options["runtime_env"] = {"env_vars": dict(rep.env_vars)}
    scaling: dict[str, Any]
    if rep.num_replicas == "auto":
        scaling = {"autoscaling_config": {
            "min_replicas": rep.min_replicas, "max_replicas": rep.max_replicas,
            "target_ongoing_requests": rep.target_ongoing_requests or config.batching.max_batch_size}}
    else:
        scaling = {"num_replicas": rep.num_replicas}
    deployment = DetectorDeployment.options(
        ray_actor_options=actor_options, max_ongoing_requests=config.max_ongoing_requests,
        logging_config={"enable_access_log": config.http.access_log}, **scaling)
    return deployment.bind(settings, config.input.model_dump(), config.batching.model_dump())


def app_builder(args: dict[str, Any]) -> "Application":
    """For ``serve run`` / ``serve deploy``: ``detbatch.serve.app:app_builder`` with arguments ``config=FILE``
    and dotted keys (``model.weights=s3://.../model.pt batching.max_batch_size=16``), parsed as YAML values.
    HTTP host and port are then Serve's own (``serve run --host/--port``, the Serve config's ``http_options``)."""
    import yaml

    from detbatch.config import load_config

    args = dict(args)
    path = args.pop("config", None)
    assignments = {k: yaml.safe_load(v) if isinstance(v, str) else v for k, v in args.items()}
    return build_app(load_config(ServeConfig, path, None, assignments))


def start_serve(config: ServeConfig) -> str:
    """Deploy the application on the Ray cluster of ``config.ray`` (started by Serve's HTTP options the first
    time); returns its URL once every replica is up. The application outlives this call."""
    from detbatch.runtime import init_ray

    init_ray(config.ray.address)
    http = config.http
    serve.start(proxy_location=http.proxy_location, http_options={"host": http.host, "port": http.port})
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    return f"http://{http.host}:{http.port}"


def stop_serve() -> None:
    """Delete the application (its replicas release their CPUs and GPUs); Serve's proxies stay."""
    serve.delete(APP_NAME)
