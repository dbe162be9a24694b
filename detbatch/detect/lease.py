"""One writer per output at a time: a lease taken atomically, kept alive by a heartbeat, fenced by generation.

A detect run holds ``OUTPUT/_detbatch/lease/GGGGGGGGGG.json`` for generation ``G``, created with an exclusive
write (a hard link locally, ``If-None-Match: *`` on S3), so of two drivers that race for generation ``G``
exactly one wins. The file names its holder (host, pid, Ray job, start time) and carries a heartbeat that the
holder rewrites every :data:`HEARTBEAT_S`. The current lease is the highest generation.

A new run takes the next generation when the current lease is released, or its holder is dead: a process of
this host that no longer exists, or a heartbeat older than ``output.lease_timeout_s``. Otherwise it is refused,
naming the holder; ``--take-over`` takes the lease anyway (the user says that holder is dead).

Fencing: every part a run writes carries its generation in its name (:mod:`detbatch.detect.sink`), and a
detector actor checks before each commit that no later generation exists. So a zombie of an older run (a
killed driver whose actors still run, a partitioned node) cannot overwrite the new run's parts: at most it
commits a part of its own generation, which is either valid (it covers images nobody else covered) or
shadowed by the newer generation's part of the same images. Lease files are never deleted (a few hundred
bytes per run), so that a zombie of any generation can see that it was superseded.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from detbatch import storage
from detbatch.errors import DetbatchError, RunFailed

logger = logging.getLogger(__name__)

LEASE_DIR = "_detbatch/lease"
# How often the holder rewrites its heartbeat. A tenth of the default timeout, so that a slow PUT or a
# GC pause never makes a live run look dead.
HEARTBEAT_S = 6.0


class LeaseHeld(DetbatchError):
    """Another live run holds the output's lease."""


class LeaseLost(RunFailed):
    """This run's lease was taken by a newer run; it stops writing."""


@dataclass(frozen=True)
class Holder:
    """What a lease file says about the run that holds it."""

    generation: int
    host: str
    pid: int
    process_start: str
    """The holder process's start time (Linux ``/proc/PID/stat``), so that a reused pid is not taken for it."""
    job_id: str | None
    started_at: float
    heartbeat_at: float
    token: str
    released: bool = False

    def describe(self) -> str:
        job = f", Ray job {self.job_id}" if self.job_id else ""
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started_at))
        return (f"generation {self.generation}, host {self.host}, pid {self.pid}{job}, started {started}, "
                f"last heartbeat {time.time() - self.heartbeat_at:.0f} s ago")

    def alive(self, timeout_s: float) -> bool:
        """Whether the holder may still be writing."""
        if self.released:
            return False
        if self.host == socket.gethostname():
            return _process_start(self.pid) == self.process_start
        return time.time() - self.heartbeat_at < timeout_s


def _process_start(pid: int) -> str:
    """An id of the process ``pid`` that a reused pid does not share ("" if there is no such process)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]  # field 22, starttime (the name may hold spaces)
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return ""
    except PermissionError:
        pass
    return "alive"  # not Linux: the pid exists, its start time is unknown


def _lease_uri(output: str, generation: int) -> str:
    return storage.join(output, LEASE_DIR, f"{generation:010d}.json")


def current_holder(output: str) -> Holder | None:
    """The holder of the output's highest lease generation, or None if no run ever took one."""
    names = sorted(n for n in storage.list_names(storage.join(output, LEASE_DIR)) if n.endswith(".json"))
    if not names:
        return None
    data = json.loads(storage.read_text(storage.join(output, LEASE_DIR, names[-1])))
    return Holder(**data)


def superseded(output: str, generation: int) -> bool:
    """Whether a run newer than ``generation`` took the output's lease (one existence check)."""
    return storage.exists(_lease_uri(output, generation + 1))


def _job_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_job_id() if ray.is_initialized() else None
    except Exception:  # not connected, or an older Ray: the job id is only informative
        return None


class Lease:
    """A held lease: :meth:`acquire` it, then :meth:`release` it (also on failure)."""

    def __init__(self, output: str, holder: Holder):
        self.output = output
        self.holder = holder
        self.lost_to: Holder | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="detbatch-lease-heartbeat", daemon=True)

    @property
    def generation(self) -> int:
        return self.holder.generation

    @classmethod
    def acquire(cls, output: str, timeout_s: float, take_over: bool = False) -> "Lease":
        """Take the next generation of ``output``'s lease, or raise :class:`LeaseHeld` naming the live holder."""
        previous = current_holder(output)
        if previous is not None and previous.alive(timeout_s):
            if not take_over:
                raise LeaseHeld(
                    f"{output} is being written by another detect run ({previous.describe()}). Wait for it to "
                    f"finish; if it is dead, rerun with --take-over (or wait until its heartbeat is "
                    f"{timeout_s:.0f} s old: output.lease_timeout_s)"
                )
            logger.warning("--take-over: taking %s from %s", output, previous.describe())
        elif previous is not None and not previous.released:
            logger.warning("%s: taking over the lease of a dead run (%s)", output, previous.describe())
        generation = (previous.generation if previous else 0) + 1
        now = time.time()
        holder = Holder(generation, socket.gethostname(), os.getpid(), _process_start(os.getpid()), _job_id(),
                        now, now, uuid.uuid4().hex)
        if not storage.create_exclusive(_lease_uri(output, generation), _encode(holder)):
            winner = current_holder(output)
            raise LeaseHeld(f"{output}: another detect run took the lease at the same moment "
                            f"({winner.describe() if winner else 'unknown holder'}); this one stops")
        lease = cls(output, holder)
        lease._thread.start()
        logger.info("%s: lease generation %d taken", output, generation)
        return lease

    def check(self) -> None:
        """Raise :class:`LeaseLost` if a newer run took the lease."""
        if self.lost_to is None and superseded(self.output, self.generation):
            self.lost_to = current_holder(self.output)
        if self.lost_to is not None:
            raise LeaseLost(
                f"{self.output}: a newer run took this output's lease ({self.lost_to.describe()}); this run "
                f"stopped writing. Its committed parts stay valid; the newer run finishes the rest"
            )

    def _write(self, **changes: Any) -> None:
        self.holder = Holder(**{**asdict(self.holder), **changes})
        storage.write_bytes(_lease_uri(self.output, self.generation), _encode(self.holder))

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if superseded(self.output, self.generation):
                    self.lost_to = current_holder(self.output)
                    logger.warning("%s: lease taken over by a newer run", self.output)
                    return
                self._write(heartbeat_at=time.time())
            except Exception as e:  # a missed heartbeat is retried at the next beat
                logger.warning("%s: lease heartbeat failed: %s", self.output, e)

    def release(self) -> None:
        """Stop the heartbeat and mark the lease released, so that the next run takes it at once."""
        self._stop.set()
        self._thread.join()
        if self.lost_to is None and not superseded(self.output, self.generation):
            self._write(heartbeat_at=time.time(), released=True)


def _encode(holder: Holder) -> bytes:
    return json.dumps(asdict(holder), indent=2).encode()
