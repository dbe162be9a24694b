"""Failpoints: named places where a test can make this process die, to prove what a crash there leaves.

``failpoint("sink.between_detections_and_images")`` does nothing unless the environment variable
``DETBATCH_FAILPOINTS`` names it: ``NAME=exit`` (die at the first pass, ``os._exit(FAILPOINT_EXIT_CODE)``,
no cleanup, no ``finally`` blocks, as a SIGKILL would) or ``NAME=exit@N`` (at the N-th pass); ``NAME=raise``
(raise :class:`FailpointError` at every pass, as a model that fails on one input does, the process living
on) or ``NAME=raise@N`` (at the N-th pass only); several separated by commas. The variable is read once
per process, so an unset one costs a dict lookup. The fault-injection tests (docs/reliability.md) set it for
a writer process (or a serve replica); nothing else should.
"""

from __future__ import annotations

import os
from collections import Counter

# The exit status of a process that died at a failpoint: tests tell it from any other failure.
FAILPOINT_EXIT_CODE = 97

_passes: Counter[str] = Counter()
# name -> (verb, pass): the pass it fires at, 0 for every pass.
_armed: dict[str, tuple[str, int]] | None = None


class FailpointError(RuntimeError):
    """What a ``NAME=raise`` failpoint raises."""


def _parse(spec: str) -> dict[str, tuple[str, int]]:
    armed = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        verb, _, nth = action.partition("@")
        if verb not in ("exit", "raise"):
            raise ValueError(f"DETBATCH_FAILPOINTS: {item!r}: the action must be exit, exit@N, raise or raise@N")
        armed[name] = (verb, int(nth or (1 if verb == "exit" else 0)))
    return armed


def failpoint(name: str) -> None:
    """Die (or raise) here if ``DETBATCH_FAILPOINTS`` arms ``name`` for this pass (see the module docstring)."""
    global _armed
    if _armed is None:
        _armed = _parse(os.environ.get("DETBATCH_FAILPOINTS", ""))
    if name in _armed:
        _passes[name] += 1
        verb, nth = _armed[name]
        if nth in (0, _passes[name]):
            if verb == "exit":
                os._exit(FAILPOINT_EXIT_CODE)
            raise FailpointError(f"failpoint {name} (DETBATCH_FAILPOINTS)")
