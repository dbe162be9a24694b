"""Failpoints: named places where a test can make this process die, to prove what a crash there leaves.

``failpoint("sink.between_detections_and_images")`` does nothing unless the environment variable
``DETBATCH_FAILPOINTS`` names it: ``NAME=exit`` (die at the first pass, ``os._exit(FAILPOINT_EXIT_CODE)``,
no cleanup, no ``finally`` blocks, as a SIGKILL would) or ``NAME=exit@N`` (at the N-th pass), several
separated by commas. The variable is read once per process, so an unset one costs a dict lookup. The
fault-injection tests (docs/reliability.md) set it for a writer process; nothing else should.
"""

from __future__ import annotations

import os
from collections import Counter

# The exit status of a process that died at a failpoint: tests tell it from any other failure.
FAILPOINT_EXIT_CODE = 97

_passes: Counter[str] = Counter()
_armed: dict[str, int] | None = None


def _parse(spec: str) -> dict[str, int]:
    armed = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        verb, _, nth = action.partition("@")
        if verb != "exit":
            raise ValueError(f"DETBATCH_FAILPOINTS: {item!r}: the action must be exit or exit@N")
        armed[name] = int(nth or 1)
    return armed


def failpoint(name: str) -> None:
    """Die here if ``DETBATCH_FAILPOINTS`` arms ``name`` for this pass (see the module docstring)."""
    global _armed
    if _armed is None:
        _armed = _parse(os.environ.get("DETBATCH_FAILPOINTS", ""))
    if name in _armed:
        _passes[name] += 1
        if _passes[name] == _armed[name]:
            os._exit(FAILPOINT_EXIT_CODE)
