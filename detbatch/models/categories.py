"""What a detector's output labels mean: :class:`Categories`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Categories:
    """What the model's output labels mean: ``labels[i]`` is ``(category_id, name)`` or None.

    None marks labels that are not categories (background, COCO's "N/A" gaps). For torchvision's
    COCO weights the label index is the COCO category id; a detbatch checkpoint stores its own table.
    """

    labels: tuple[tuple[int, str] | None, ...]

    @classmethod
    def from_names(cls, names: list[str]) -> "Categories":
        """From torchvision's ``weights.meta["categories"]`` (index = label = category id)."""
        return cls(tuple(None if n in ("__background__", "N/A") else (i, n) for i, n in enumerate(names)))

    @classmethod
    def from_coco(cls, categories: list[dict[str, Any]]) -> "Categories":
        """Label 0 is background; label i ≥ 1 is the i-th COCO category in ascending id order."""
        ordered = sorted(categories, key=lambda c: c["id"])
        return cls((None, *((int(c["id"]), str(c["name"])) for c in ordered)))

    def to_list(self) -> list[dict[str, Any] | None]:
        return [None if c is None else {"id": c[0], "name": c[1]} for c in self.labels]

    @classmethod
    def from_list(cls, items: list[dict[str, Any] | None]) -> "Categories":
        return cls(tuple(None if c is None else (int(c["id"]), str(c["name"])) for c in items))

    @property
    def num_classes(self) -> int:
        """The detector's ``num_classes``: labels including background."""
        return len(self.labels)
