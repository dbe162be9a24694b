"""A read-only fsspec filesystem of virtual image files, for listing benchmarks at 100M files without
storage: ``virtual://N/P/`` holds N files, ``{i:012d}.jpg``, spread over P sub-prefixes ``{p:05d}/``
(file i under prefix ``i * P // N``), each of 1,234 bytes with a fixed ETag. Only listing is served:
``info``, ``ls`` and ``find``, as s3fs gives them.

Ray workers find it through ``register`` as a worker setup hook (benchmarks/scale.py).
"""

from __future__ import annotations

from typing import Any

from fsspec import AbstractFileSystem

SIZE = 1234
ETAG = '"0123456789abcdef"'


def register() -> None:
    import fsspec

    fsspec.register_implementation("virtual", VirtualFileSystem, clobber=True)


class VirtualFileSystem(AbstractFileSystem):
    protocol = "virtual"
    root_marker = ""

    @staticmethod
    def _shape(path: str) -> tuple[int, int, list[str]]:
        parts = path.strip("/").split("/")
        return int(parts[0]), int(parts[1]), parts[2:]

    def _file(self, path: str) -> dict[str, Any]:
        return {"name": path, "type": "file", "size": SIZE, "ETag": ETAG}

    def _range(self, n: int, prefixes: int, p: int) -> range:
        # i with i * prefixes // n == p
        return range(-(-p * n // prefixes), -(-(p + 1) * n // prefixes))

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        n, prefixes, rest = self._shape(path)
        if len(rest) <= 1 and not (rest and rest[0].endswith(".jpg")):
            return {"name": path.rstrip("/"), "type": "directory", "size": 0}
        if len(rest) == 2:
            return self._file(path)
        raise FileNotFoundError(path)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        n, prefixes, rest = self._shape(path)
        base = path.rstrip("/")
        if not rest:
            out = [{"name": f"{base}/{p:05d}", "type": "directory", "size": 0} for p in range(prefixes)]
        else:
            out = [self._file(f"{base}/{i:012d}.jpg") for i in self._range(n, prefixes, int(rest[0]))]
        return out if detail else [o["name"] for o in out]

    def find(self, path: str, maxdepth: Any = None, withdirs: bool = False, detail: bool = False,
             **kwargs: Any) -> Any:
        n, prefixes, rest = self._shape(path)
        base = path.rstrip("/")
        chosen = range(prefixes) if not rest else [int(rest[0])]
        root = base if rest else base
        out = {}
        for p in chosen:
            folder = f"{root}/{p:05d}" if not rest else base
            for i in self._range(n, prefixes, p):
                name = f"{folder}/{i:012d}.jpg"
                out[name] = self._file(name)
        return out if detail else list(out)
