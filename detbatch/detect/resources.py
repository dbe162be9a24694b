"""Before the stream starts: can every stage of detect be scheduled on this cluster?

Ray Data starts the detector pool first and holds its actors' resources for the whole run. A pool that
leaves no node with room for a read/decode task reads nothing, and its actors wait forever for input:
on a 2-CPU machine, two actors of one CPU each and decode tasks of one CPU. :func:`placement_problem`
finds that before anything starts, from the nodes' total resources, and names the numbers and the fix.
With an autoscaler that adds nodes on demand (``inference.autoscaling: true``) the same finding is only
a warning: the nodes the stages need may not exist yet.

:func:`resolve_pool` turns the ``auto`` settings of ``inference`` into the pool this cluster gets (device,
``max_actors``, where JPEGs are decoded, overlapped commits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from detbatch.config import ConfigError
from detbatch.detect.config import InferenceConfig

Resources = Mapping[str, float]

# Resources Ray lists per node that are not requested by tasks ("node:10.0.0.1", "memory", ...).
_IGNORED_PREFIXES = ("node:", "accelerator_type:")
_IGNORED = frozenset({"memory", "object_store_memory"})


def _fits(free: Resources, need: Resources) -> bool:
    return all(free.get(k, 0.0) + 1e-9 >= v for k, v in need.items() if v > 0)


def _take(free: dict[str, float], need: Resources) -> None:
    for k, v in need.items():
        free[k] = free.get(k, 0.0) - v


def _describe(need: Resources) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in need.items() if v > 0) or "nothing"


def placement_problem(nodes: list[Resources], actor: Resources, actors: int, task: Resources) -> str | None:
    """Why ``actors`` detector actors needing ``actor`` each, plus one read/decode task needing ``task``,
    cannot all run at once on ``nodes`` (each a node's total resources); None when they can.

    Actors are placed first fit on the nodes with the most room, as the pool would hold them; then some
    node must still have room for a task.
    """
    free = [{k: float(v) for k, v in n.items() if k not in _IGNORED and not k.startswith(_IGNORED_PREFIXES)}
            for n in nodes]
    totals = {k: sum(n.get(k, 0.0) for n in free) for k in {*actor, *task}}
    for placed in range(actors):
        room = [n for n in free if _fits(n, actor)]
        if not room:
            return (f"the detector pool needs {actors} actors of {_describe(actor)} each, but the cluster "
                    f"({_describe(totals)} in {len(nodes)} nodes) holds only {placed}; lower "
                    f"inference.min_actors or the per-actor resources (inference.cpus_per_actor, "
                    f"gpus_per_actor, actor_resources), or add nodes")
        _take(max(room, key=lambda n: n.get("CPU", 0.0)), actor)
    if not any(_fits(n, task) for n in free):
        left = max((n.get("CPU", 0.0) for n in free), default=0.0)
        return (f"{actors} detector actors of {_describe(actor)} leave at most {max(left, 0.0):g} CPU on any node, "
                f"and a read/decode task needs {_describe(task)}: nothing would be read and the actors would "
                f"wait forever. Lower inference.min_actors or inference.cpus_per_actor, or lower "
                f"inference.decode_cpus (e.g. 0.5), or add nodes")
    return None


def auto_pool_size(nodes: list[Resources], actor: Resources, decode_cpus: float) -> int:
    """``inference.max_actors: auto``: how many actors needing ``actor`` each the ``nodes`` (each a node's
    total resources) hold, keeping ``decode_cpus`` (one read/decode task) free on each node; at least 1.

    For a GPU pool that is one actor per GPU (``gpus_per_actor`` each) wherever the node has the CPUs for
    them; for a CPU pool, (CPU − ``decode_cpus``) / ``cpus_per_actor`` per node, which on CPU nodes is the
    layout measured best (docs/detect.md, "Pool size"): single-threaded actors on every core but the decode
    task's, since decoding an image takes a few percent of the CPU time of detecting it.
    """
    total = 0
    for node in nodes:
        free = {k: float(v) for k, v in node.items() if k not in _IGNORED and not k.startswith(_IGNORED_PREFIXES)}
        free["CPU"] = free.get("CPU", 0.0) - decode_cpus
        counts = [free.get(k, 0.0) / v for k, v in actor.items() if v > 0]
        total += max(0, int(min(counts) + 1e-9)) if counts else 0
    return max(1, total)


@dataclass(frozen=True)
class Pool:
    """The detector pool as a cluster gets it: ``inference``'s ``auto`` settings resolved."""

    device: str
    """``cuda`` or ``cpu``."""
    gpus: float
    """GPUs per actor (0 on CPU)."""
    threads: int
    """torch intra-op threads per actor."""
    max_actors: int
    decode: str
    """Where JPEGs are decoded: ``cpu`` (the decode tasks) or ``gpu`` (in the actors, on ``device``)."""
    overlap: bool
    """Two calls per actor at once: one in the model, one committing (``inference.overlap_commit``)."""


def actor_resources(inf: InferenceConfig, gpus: float) -> dict[str, float]:
    """What one detector actor asks Ray for."""
    return {"CPU": inf.cpus_per_actor, "GPU": gpus, **inf.actor_resources}


def resolve_pool(inf: InferenceConfig, nodes: list[Resources]) -> Pool:
    """The pool of ``inf`` on a cluster of ``nodes`` (each a node's total resources): the device (``auto``:
    cuda when a node has a GPU), ``max_actors: auto`` (:func:`auto_pool_size`, at least ``min_actors``),
    ``decode: auto`` (gpu on a GPU pool) and ``overlap_commit: null`` (on for a GPU pool)."""
    has_gpu = sum(n.get("GPU", 0.0) for n in nodes) > 0
    if inf.device == "cuda" and not has_gpu:
        raise ConfigError("inference.device is 'cuda' but the Ray cluster has no GPU; use device: auto or cpu")
    use_gpu = inf.device == "cuda" or (inf.device == "auto" and has_gpu)
    gpus = inf.gpus_per_actor if use_gpu else 0.0
    max_actors = inf.max_actors
    if max_actors == "auto":
        max_actors = max(inf.min_actors, auto_pool_size(nodes, actor_resources(inf, gpus), inf.decode_cpus))
    return Pool(
        device="cuda" if use_gpu else "cpu",
        gpus=gpus,
        threads=inf.threads_per_actor or max(1, int(inf.cpus_per_actor)),
        max_actors=max_actors,
        decode={"auto": "gpu" if use_gpu else "cpu"}.get(inf.decode, inf.decode),
        overlap=use_gpu if inf.overlap_commit is None else inf.overlap_commit,
    )
