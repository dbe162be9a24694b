"""``ServeConfig``: one validated object per ``detbatch serve`` (YAML in ``configs/``, flags on top).

Sections: ``model`` (detect's own: the same names, weights, thresholds), ``input`` (the caps on one
request's image, with detect's defaults and key names, so that a refusal's message names a key that exists
here too), ``batching``, ``replicas``, ``http`` and ``ray``. Every key is checked; an unknown key is an
error naming it (see :func:`detbatch.config.load_config`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from detbatch.config import RayConfig, Section
from detbatch.detect.config import MAX_BYTES, MAX_PIXELS, DetectModelConfig

# Serve's name for the application; `serve status`, `serve delete` and the replicas' actor names show it.
APP_NAME = "detbatch"


class ServeInputConfig(Section):
    max_pixels: int | None = Field(MAX_PIXELS, ge=1)
    """Largest image (width × height, from its header) that is decoded; larger: 413. ``null``: Pillow's cap."""
    max_bytes: int | None = Field(MAX_BYTES, ge=1)
    """Largest request body (or file behind ``{"uri": ...}``), known from ``Content-Length`` or the file's size
    before it is read; larger: 413. ``null``: no cap."""
    uri_prefixes: list[str] = []
    """``{"uri": ...}`` requests may name images under these prefixes only (``s3://bucket/images/``, a local
    folder). Empty: such requests are refused (403): a server that reads any URI a client names reads
    whatever its credentials reach, on the client's behalf."""


class BatchingConfig(Section):
    max_batch_size: int = Field(8, ge=1)
    """Requests a replica runs through the model at once (``@serve.batch``)."""
    batch_wait_ms: float = Field(10.0, ge=0)
    """How long the first request of a batch waits for others before the batch runs anyway."""


class ReplicasConfig(Section):
    num_replicas: int | Literal["auto"] = 1
    """Replicas of the model; ``auto``: Serve's autoscaler, between ``min_replicas`` and ``max_replicas``."""
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=1)
    target_ongoing_requests: float | None = Field(None, gt=0)
    """``auto``: requests in flight per replica the autoscaler aims at; default ``batching.max_batch_size``,
    so that a replica is added when its batches are full."""
    max_ongoing_requests: int | None = Field(None, ge=1)
    """Requests in flight at one replica at most; default twice ``max_batch_size``: one batch running, the next
    one forming. At least ``max_batch_size``, or batches could never fill."""
    cpus_per_replica: float = Field(1.0, gt=0)
    gpus_per_replica: float = Field(1.0, gt=0)
    """GPUs each replica reserves where the model runs on GPU (``device`` cuda, or auto on a GPU cluster)."""
    threads_per_replica: int | None = Field(None, ge=1)
    """torch intra-op threads in each replica; default ``cpus_per_replica`` (at least 1)."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """auto: cuda where the Ray cluster has GPUs, else cpu (as detect's pool decides)."""
    fp16: bool = True
    """Autocast to fp16 on GPU (ignored on CPU)."""
    resources: dict[str, float] = {}
    """Custom Ray resources each replica needs (``{"inference_node": 1}``), as detect's actors."""
    env_vars: dict[str, str] = {}
    """Environment variables of the replicas' processes (``AWS_ENDPOINT_URL``, ``TORCH_HOME``, ...)."""

    @model_validator(mode="after")
    def _bounds(self) -> "ReplicasConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas}); "
                             f"make min_replicas ≤ max_replicas")
        return self

    @field_validator("num_replicas")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"{v} replicas: give at least 1, or auto")
        return v


class HttpConfig(Section):
    host: str = "127.0.0.1"
    """Where the proxies listen: loopback by default; ``0.0.0.0`` to take requests from other machines."""
    port: int = Field(8000, ge=1, le=65535)
    proxy_location: Literal["EveryNode", "HeadOnly"] = "EveryNode"
    """Serve's HTTP proxies: on every node that runs a replica, or on the head node only."""
    access_log: bool = True
    """A log line per request from the replicas (Serve's access log); off saves their CPU under heavy load."""


class ServeConfig(Section):
    model: DetectModelConfig = DetectModelConfig()
    input: ServeInputConfig = ServeInputConfig()
    batching: BatchingConfig = BatchingConfig()
    replicas: ReplicasConfig = ReplicasConfig()
    http: HttpConfig = HttpConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _batches_can_fill(self) -> "ServeConfig":
        ongoing = self.replicas.max_ongoing_requests
        if ongoing is not None and ongoing < self.batching.max_batch_size:
            raise ValueError(f"replicas.max_ongoing_requests ({ongoing}) < batching.max_batch_size "
                             f"({self.batching.max_batch_size}): a batch could never fill; raise the first or "
                             f"lower the second")
        return self

    @property
    def max_ongoing_requests(self) -> int:
        return self.replicas.max_ongoing_requests or 2 * self.batching.max_batch_size
