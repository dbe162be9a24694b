"""Typed job configs, shared machinery: YAML in ``configs/``, validated into one object, CLI flags on top.

Each job has its config class beside it (:class:`detbatch.detect.config.DetectConfig`,
:class:`detbatch.training.config.TrainConfig`, :class:`detbatch.evaluate.config.EvaluateConfig`), built
from :class:`Section`s. Every key is checked, so a typo is an error naming the key rather than a silently
ignored setting. CLI flags and ``--set section.key=value`` override the file (:func:`load_config`;
the CLI's ``load_job_config`` refuses one key given both ways).
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from detbatch.errors import DetbatchError


class ConfigError(DetbatchError, ValueError):
    """A config that cannot be used, with the key, the value and the fix."""


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RayConfig(Section):
    address: str | None = None
    """``None``: the job's cluster (``ray job submit``) or a new local Ray; ``auto``: a running one."""


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
    assignments: dict[str, Any] | None = None,
) -> Any:
    """Load ``path`` (YAML, local or URI) into ``model``, then apply dotted ``overrides`` (None skipped:
    a flag that was not given) and ``assignments`` (``--set``; None is a value, so ``KEY=null`` clears it)."""
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
    for key, value in (assignments or {}).items():
        _set_dotted(tree, key, value)
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None
