"""Finding every file under a folder/prefix: one sequential listing, or Ray tasks over its sub-prefixes.

A sequential ``fs.find`` of an S3 prefix is one request per 1,000 keys, one after the other: hours at
100M keys. :func:`find` lists the prefix with a delimiter first (its files and its sub-prefixes), then
lists every sub-prefix in its own Ray task; a task whose sub-prefix has sub-prefixes of its own hands
them back to be listed by further tasks, down to :data:`SPLIT_DEPTH` levels, below which one task lists
the rest of its sub-tree with ``find``. The files found are the same as ``fs.find``'s, with the same
``info`` fields that versions are made of, and the caller sorts them: the order and the digests do not
depend on how the listing was split.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from detbatch import storage

if TYPE_CHECKING:
    import fsspec

logger = logging.getLogger(__name__)

# Levels of sub-prefixes split into tasks of their own. Datasets are laid out a few levels deep
# (split/shard/ or yyyy/mm/dd/); past that a sub-tree is listed by one task with find.
SPLIT_DEPTH = 3
# Fewer sub-prefixes than this at the top: the sequential listing (a task's start costs more than it saves).
MIN_PREFIXES = 2
# The info fields a version is made of (detbatch.detect.units.file_version), and the size; nothing else
# crosses from the tasks.
_INFO_KEYS = ("size", "ETag", "etag", "md5Hash", "mtime", "LastModified")


def _slim(info: dict[str, Any]) -> dict[str, Any]:
    return {"type": "file", **{k: info[k] for k in _INFO_KEYS if k in info}}


def list_level(uri: str, recurse: bool) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``({path: info} of the files, [sub-prefix URIs])`` directly under ``uri`` (a delimiter listing),
    or with ``recurse`` every file below it and no sub-prefixes."""
    fs, path = storage.resolve(uri)

    def listed() -> tuple[dict[str, dict[str, Any]], list[str]]:
        fs.invalidate_cache(path)
        if recurse:
            return {p: _slim(i) for p, i in fs.find(path, detail=True).items()}, []
        files, subs = {}, []
        for info in fs.ls(path, detail=True):
            name = info["name"].rstrip("/")
            if info.get("type") == "directory":
                if name != path.rstrip("/"):
                    subs.append(storage.to_uri(fs, name))
            else:
                files[name] = _slim(info)
        return files, sorted(subs)

    return storage.retrying(listed, f"{uri}: list")


def find(fs: "fsspec.AbstractFileSystem", path: str, parallel: bool | None = None) -> dict[str, dict[str, Any]]:
    """Every file below ``path``: ``{path: info}`` like ``fs.find(path, detail=True)`` (unsorted).

    ``parallel``: list sub-prefixes in Ray tasks (True: Ray must be up); None: when Ray is up; False, or
    fewer than :data:`MIN_PREFIXES` sub-prefixes at the top: ``fs.find`` here.
    """
    if parallel is None:
        import ray

        parallel = ray.is_initialized()
    if not parallel:
        return fs.find(path, detail=True)
    files, subs = list_level(storage.to_uri(fs, path), recurse=False)
    if len(subs) < MIN_PREFIXES:
        return fs.find(path, detail=True)
    import ray

    task = ray.remote(num_cpus=0.1, max_retries=3)(list_level)
    pending = {task.remote(s, SPLIT_DEPTH <= 1): 1 for s in subs}
    tasks = len(pending)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        depth = pending.pop(done[0])
        found, deeper = ray.get(done[0])
        files.update(found)
        for s in deeper:
            pending[task.remote(s, depth + 1 >= SPLIT_DEPTH)] = depth + 1
            tasks += 1
    logger.info("%s: listed %d files in %d parallel tasks", path, len(files), tasks)
    return files
