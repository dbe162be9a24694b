"""Before the stream starts: can every stage of detect be scheduled on this cluster?

Ray Data starts the detector pool first and holds its actors' resources for the whole run. A pool that
leaves no node with room for a read/decode task reads nothing, and its actors wait forever for input:
on a 2-CPU machine, two actors of one CPU each and decode tasks of one CPU. :func:`placement_problem`
finds that before anything starts, from the nodes' total resources, and names the numbers and the fix.
With an autoscaler that adds nodes on demand (``inference.autoscaling: true``) the same finding is only
a warning: the nodes the stages need may not exist yet.
"""

from __future__ import annotations

from typing import Mapping

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
