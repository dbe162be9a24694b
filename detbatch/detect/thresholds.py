"""Score thresholds for detect: one score for every category, or per category from a ``thresholds.json``.

``--score-threshold 0.3`` keeps every box scoring at least 0.3. ``--score-threshold thresholds.json``
(any fsspec URI; ``detbatch evaluate`` writes one, the F1-optimal threshold of each category) keeps a box
of category ``c`` when its score is at least ``per_category[c]``, or ``default`` for a category the file
does not list (``null``: keep all). The format (docs/evaluate.md, "thresholds.json")::

    {"per_category": {"<category_id>": score, ...}, "default": score or null}

The model itself is built with the lowest of them, so that no box a category keeps is cut before the
per-category filter sees it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detbatch import storage
from detbatch.errors import InputError

_FORMAT = '{"per_category": {"<category_id>": score, ...}, "default": score or null}'


@dataclass(frozen=True)
class ScoreThresholds:
    default: float | None
    """The threshold of a category without its own (None: keep every box)."""
    per_category: dict[int, float] = field(default_factory=dict)

    @property
    def floor(self) -> float:
        """The lowest score any category keeps: the model's own threshold."""
        return min([*self.per_category.values(), self.default or 0.0])

    def fingerprint(self) -> float | dict[str, Any]:
        """What a run's state records: the plain number, or the thresholds themselves (not the file's URI,
        so that a file rewritten in place is a change, and a copy of the same file is not)."""
        if not self.per_category and self.default is not None:
            return self.default
        return {"default": self.default, "per_category": {str(k): v for k, v in sorted(self.per_category.items())}}

    @classmethod
    def from_fingerprint(cls, value: float | dict[str, Any]) -> "ScoreThresholds":
        """The inverse of :meth:`fingerprint`."""
        if not isinstance(value, dict):
            return cls(float(value))
        return cls(value["default"], {int(k): float(v) for k, v in value["per_category"].items()})

    def keep(self, category_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """The boxes (of these categories and scores) that their thresholds keep."""
        if not self.per_category:
            return scores >= (self.default or 0.0)
        cut = np.array([self.per_category.get(int(c), self.default or 0.0) for c in category_ids], dtype=np.float64)
        return scores >= cut


def parse_score_threshold(value: float | str) -> ScoreThresholds:
    """``value`` as ``model.score_threshold`` holds it: a score in [0, 1], or a thresholds.json URI."""
    if not isinstance(value, str):
        return ScoreThresholds(float(value))
    return read_thresholds(value)


def read_thresholds(uri: str) -> ScoreThresholds:
    """The thresholds in ``uri``; raises :class:`InputError` naming the file, the entry and the format."""
    storage.check_readable(uri)
    try:
        data = json.loads(storage.read_bytes(uri))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"--score-threshold {uri}: not JSON ({e}); give a score in [0, 1] or a file {_FORMAT}") from None
    if not isinstance(data, dict) or not set(data) <= {"per_category", "default"} or not data:
        raise InputError(f"--score-threshold {uri}: expected {_FORMAT} (as `detbatch evaluate` writes it), "
                         f"found {_describe(data)}")
    per_category = data.get("per_category") or {}
    if not isinstance(per_category, dict):
        raise InputError(f"--score-threshold {uri}: per_category must map category ids to scores, found "
                         f"{_describe(per_category)}")
    parsed: dict[int, float] = {}
    for key, score in per_category.items():
        try:
            category = int(key)
        except (TypeError, ValueError):
            raise InputError(f"--score-threshold {uri}: per_category key {key!r} is not a category id "
                             f"(the integer ids of the output's category_id column)") from None
        parsed[category] = _score(uri, f"per_category[{key!r}]", score)
    default = data.get("default")
    return ScoreThresholds(None if default is None else _score(uri, "default", default), parsed)


def _score(uri: str, where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise InputError(f"--score-threshold {uri}: {where} is {value!r}; a score must be a number in [0, 1]")
    return float(value)


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return f"an object with keys {sorted(map(str, value))}"
    return f"a {type(value).__name__}"
