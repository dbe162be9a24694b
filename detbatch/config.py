"""Typed job configs: YAML in ``configs/``, validated into one object, CLI flags on top.

A config file holds sections (``input``, ``output``, ``model``, ``inference``, ``ray``); every key is
checked, so a typo is an error naming the key rather than a silently ignored setting. CLI flags and
``--set section.key=value`` override the file.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(ValueError):
    """A config that cannot be used, with the key, the value and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputConfig(_Section):
    uri: str | None = None
    """A folder/prefix or glob of image files, or of ``.tar`` / ``.parquet`` shards."""
    format: Literal["auto", "images", "tar", "parquet"] = "auto"
    manifest: str | None = None
    """Optional COCO JSON whose ``images[].file_name`` (relative to ``uri``) give each file its ``image_id``."""
    images_per_unit: int | None = Field(None, ge=1)
    """Image files per read task and resume grain (a rerun redoes at most part of one unit per failure).
    Default: ``output.rows_per_file``, so that one unit's decoded images reach the pool as one call.
    Ray Data cuts a task's output into blocks of up to 128 MiB and hands an actor whole blocks, so a
    unit larger than a call makes one actor take several calls while others wait."""


class OutputConfig(_Section):
    uri: str | None = None
    overwrite: bool = False
    rows_per_file: int = Field(256, ge=1)
    """Images per detector call, committed as one Parquet file pair. Larger: fewer files and less
    per-call overhead; smaller: less decoded-pixel memory per call and less work redone after a crash."""


class ModelConfig(_Section):
    name: str = "fasterrcnn_mobilenet_v3_large_320_fpn"
    weights: str = "DEFAULT"
    """``DEFAULT``, a torchvision weights enum name, ``none`` (random init), or a checkpoint URI."""
    score_threshold: float = Field(0.05, ge=0.0, le=1.0)
    detections_per_image: int = Field(100, ge=1)


class InferenceConfig(_Section):
    batch_size: int = Field(8, ge=1)
    device: Literal["auto", "cuda", "cpu"] = "auto"
    fp16: bool = True
    """Autocast to fp16 on GPU (ignored on CPU)."""
    min_actors: int = Field(1, ge=1)
    max_actors: int = Field(1, ge=1)
    gpus_per_actor: float = Field(1.0, gt=0)
    cpus_per_actor: float = Field(1.0, gt=0)
    """CPUs Ray reserves per detector actor."""
    threads_per_actor: int | None = Field(None, ge=1)
    """torch intra-op threads in each actor; default: ``cpus_per_actor`` (at least 1)."""
    decode_cpus: float = Field(1.0, gt=0)
    """CPUs reserved per decode task."""
    actor_resources: dict[str, float] = {}
    """Custom Ray resources each detector actor needs, e.g. ``{"inference_node": 1}`` to pin the pool
    to nodes that advertise them (``ray start --resources``)."""
    max_retries: int = Field(3, ge=0)
    """Times a batch is retried when its actor dies (the actor is replaced)."""
    object_store_fraction: float | None = Field(None, gt=0, le=1)
    """Share of the object store that Ray Data may fill for this job, mostly decoded images waiting for
    the pool; ``None``: Ray Data's default (0.5). Lower it where node memory is tight: the buffer, and
    with it the actors' mapped memory, shrinks with it (docs/scaling.md)."""
    calls_in_flight: int = Field(1, ge=1)
    """Calls (of ``output.rows_per_file`` images) queued on each actor at once. 1 keeps the tail of a
    run balanced: work waits in the pool's queue, not behind a busy actor, so no actor idles while
    another still holds queued calls. Raise it only if actors wait for input between calls."""


class RayConfig(_Section):
    address: str | None = None
    """``None``: the job's cluster (``ray job submit``) or a new local Ray; ``auto``: a running one."""


class DetectConfig(_Section):
    input: InputConfig = InputConfig()
    output: OutputConfig = OutputConfig()
    model: ModelConfig = ModelConfig()
    inference: InferenceConfig = InferenceConfig()
    ray: RayConfig = RayConfig()

    @field_validator("inference")
    @classmethod
    def _pool_bounds(cls, v: InferenceConfig) -> InferenceConfig:
        if v.min_actors > v.max_actors:
            raise ValueError(f"min_actors ({v.min_actors}) > max_actors ({v.max_actors}); make min_actors ≤ max_actors")
        return v

    def require_io(self) -> None:
        """Raise unless both input and output are set (by the file or by flags)."""
        for section, flag in (("input", "--input"), ("output", "--output")):
            if not getattr(self, section).uri:
                raise ConfigError(f"{section}.uri is not set; give {flag} URI or set it in the config file")


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = []
    for err in error.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key {key!r} (check the spelling; see configs/ for the valid keys)")
        else:
            lines.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return f"invalid config {source}:\n  " + "\n  ".join(lines)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted!r}: {p!r} is not a section")
        node = child
    node[leaf] = value


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"inference.batch_size=16"`` → ``("inference.batch_size", 16)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. inference.batch_size=16")
    return key.strip(), yaml.safe_load(raw)


def load_config(
    model: type[BaseModel],
    path: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Any:
    """Load ``path`` (YAML, local or URI) into ``model``, then apply dotted ``overrides`` (None skipped)."""
    tree: dict[str, Any] = {}
    source = "(defaults)"
    if path:
        from detbatch import storage

        source = path
        try:
            loaded = yaml.safe_load(storage.read_text(path))
        except FileNotFoundError as e:
            raise ConfigError(f"config file {path} not found (check the path)") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(loaded).__name__}")
        tree = loaded or {}
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, key, value)
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None
