"""``DetectConfig``: one validated object per ``detbatch detect`` run (YAML in ``configs/``, flags on top).

Sections: ``input``, ``output``, ``model``, ``inference``, ``ray``. Every key is checked; an unknown key is
an error naming it (see :func:`detbatch.config.load_config`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from detbatch.config import ConfigError, RayConfig, Section

# Default caps on one input image, checked before it is decoded (docs/data.md, "Caps"). 100 Mpx is past
# any camera's full-resolution frame short of medium format, and decodes to 300 MB of RGB; Pillow itself
# only warns from ~89 Mpx and refuses from ~179 Mpx. 256 MiB is past any JPEG or PNG of that many pixels;
# without a cap one huge file is read whole into a task's memory.
MAX_PIXELS = 100_000_000
MAX_BYTES = 256 * 2**20


class InputConfig(Section):
    uri: str | None = None
    """A folder/prefix or glob of image files, of ``.tar`` / ``.parquet`` shards, or of index tables
    (``.parquet`` / ``.csv`` / ``.jsonl`` with a ``uri`` column: docs/data.md, "An index")."""
    format: Literal["auto", "images", "tar", "parquet", "index"] = "auto"
    manifest: str | None = None
    """Optional COCO JSON whose ``images[].file_name`` (relative to ``uri``) give each file its ``image_id``."""
    images_per_unit: int | None = Field(None, ge=1)
    """Image files per read task and resume grain (a rerun redoes at most part of one unit per failure).
    Default: ``output.rows_per_file``, so that one unit's decoded images reach the pool as one call.
    Ray Data cuts a task's output into blocks of up to 128 MiB and hands an actor whole blocks, so a
    unit larger than a call makes one actor take several calls while others wait."""
    max_pixels: int | None = Field(MAX_PIXELS, ge=1)
    """Largest image (width × height, from the file's header) that is decoded; a larger one is an error
    row naming its size. ``null``: no cap but Pillow's own (~179 Mpx, also an error row)."""
    verify: bool = False
    """A rerun lists the input again and refuses to go on if it changed since the output's plan was made
    (``--verify-input``). Without it a rerun reads the persisted plan and lists nothing."""
    parallel_listing: bool = True
    """List a folder/prefix in Ray tasks, one per sub-prefix, which write the image files into the output's
    listing parts; the files and their order are the same as a sequential listing's. False: one task lists
    the whole prefix with ``find`` (detbatch.detect.listing)."""
    max_bytes: int | None = Field(MAX_BYTES, ge=1)
    """Largest image file (or tar member, or Parquet value) that is read, known from the listing, the tar
    header or the value's length; a larger one is an error row naming its size. ``null``: no cap."""


class OutputConfig(Section):
    uri: str | None = None
    overwrite: bool = False
    """Replace a detbatch output made with other settings (only detbatch's own files are deleted)."""
    take_over: bool = False
    """Take the output's lease although its holder looks alive (say so only when that run is dead)."""
    lease_timeout_s: float = Field(60.0, gt=0)
    """A holder on another host whose heartbeat is older than this is taken for dead (docs/reliability.md).
    On the same host a dead holder is recognised at once."""
    rows_per_file: int = Field(256, ge=1)
    """Images per detector call, committed as one Parquet file pair. Larger: fewer files and less
    per-call overhead; smaller: less decoded-pixel memory per call and less work redone after a crash."""


class DetectModelConfig(Section):
    name: str = "fasterrcnn_mobilenet_v3_large_320_fpn"
    weights: str = "DEFAULT"
    """``DEFAULT``, a torchvision weights enum name, ``none`` (random init), or a checkpoint URI."""
    score_threshold: float | str = 0.05
    """Keep boxes scoring at least this, in [0, 1]; or a ``thresholds.json`` URI (as ``detbatch evaluate``
    writes it) with a threshold per category (:mod:`detbatch.detect.thresholds`)."""
    detections_per_image: int = Field(100, ge=1)

    @field_validator("score_threshold")
    @classmethod
    def _score_or_file(cls, value: float | str) -> float | str:
        if isinstance(value, str):
            try:
                value = float(value)  # "0.3" from a flag or a quoted YAML value
            except ValueError:
                if not value.strip():
                    raise ValueError("give a score in [0, 1] or a thresholds.json URI") from None
                return value
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{value} is not a score in [0, 1] (or give a thresholds.json URI)")
        return value


class InferenceConfig(Section):
    batch_size: int = Field(8, ge=1)
    device: Literal["auto", "cuda", "cpu"] = "auto"
    fp16: bool = True
    """Autocast to fp16 on GPU (ignored on CPU)."""
    min_actors: int = Field(1, ge=1)
    max_actors: Annotated[int, Field(ge=1)] | Literal["auto"] = 1
    """``auto``: as many actors as the cluster's nodes hold, keeping one decode task's CPUs free on each:
    on GPU nodes one per GPU (``gpus_per_actor`` each), on CPU nodes (CPU − ``decode_cpus``) /
    ``cpus_per_actor`` (:func:`detbatch.detect.resources.auto_pool_size`, docs/detect.md)."""
    gpus_per_actor: float = Field(1.0, gt=0)
    cpus_per_actor: float = Field(1.0, gt=0)
    """CPUs Ray reserves per detector actor."""
    threads_per_actor: int | None = Field(None, ge=1)
    """torch intra-op threads in each actor; default: ``cpus_per_actor`` (at least 1)."""
    decode_cpus: float = Field(1.0, gt=0)
    """CPUs reserved per decode task."""
    decode: Literal["auto", "cpu", "gpu"] = "auto"
    """Where JPEGs are decoded. ``cpu``: in the decode tasks (PIL). ``gpu``: in the detector actors, a
    mini-batch at once with ``torchvision.io.decode_jpeg`` on the actor's device (the object store carries
    the files, not their pixels); other files, and JPEGs the device refuses, are still decoded on CPU
    (docs/detect.md, "JPEG decode on the GPU"). ``auto``: ``gpu`` when the pool runs on GPUs, else ``cpu``."""
    overlap_commit: bool | None = None
    """Run two calls in each actor at once, one in the model while the other commits its Parquet, so that
    the device does not wait for storage; ``null``: on for GPU pools, off for CPU pools (where both would
    share the same cores)."""
    actor_resources: dict[str, float] = {}
    """Custom Ray resources each detector actor needs, e.g. ``{"inference_node": 1}`` to pin the pool
    to nodes that advertise them (``ray start --resources``)."""
    max_retries: int = Field(3, ge=0)
    """Times a batch is retried when its actor dies (the actor is replaced)."""
    object_store_fraction: float | None = Field(None, gt=0, le=1)
    """Share of the object store that Ray Data may fill for this job, mostly decoded images waiting for
    the pool; ``None``: Ray Data's default (0.5). Lower it where node memory is tight: the buffer, and
    with it the actors' mapped memory, shrinks with it (docs/scaling.md)."""
    autoscaling: bool = False
    """Whether an autoscaler adds nodes on demand: then a pool that does not fit the cluster as it is now is
    a warning, not an error (detbatch.detect.resources)."""
    stall_timeout_s: float = Field(900.0, gt=0)
    """A run in which no stage moves a block for this long stops with Ray Data's account of each stage
    (what waits for what). Longer than the slowest call: ``rows_per_file`` images through the model."""
    calls_in_flight: int = Field(1, ge=1)
    """Calls (of ``output.rows_per_file`` images) queued on each actor at once. 1 keeps the tail of a
    run balanced: work waits in the pool's queue, not behind a busy actor, so no actor idles while
    another still holds queued calls. Raise it only if actors wait for input between calls."""


class DetectConfig(Section):
    input: InputConfig = InputConfig()
    output: OutputConfig = OutputConfig()
    model: DetectModelConfig = DetectModelConfig()
    inference: InferenceConfig = InferenceConfig()
    ray: RayConfig = RayConfig()

    @field_validator("inference")
    @classmethod
    def _pool_bounds(cls, v: InferenceConfig) -> InferenceConfig:
        if v.max_actors != "auto" and v.min_actors > v.max_actors:
            raise ValueError(f"min_actors ({v.min_actors}) > max_actors ({v.max_actors}); make min_actors ≤ max_actors")
        return v

    def require_io(self) -> None:
        """Raise unless both input and output are set (by the file or by flags)."""
        for section, flag in (("input", "--input"), ("output", "--output")):
            if not getattr(self, section).uri:
                raise ConfigError(f"{section}.uri is not set; give {flag} URI or set it in the config file")
