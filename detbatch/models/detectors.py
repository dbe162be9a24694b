"""Detectors by name, their weights, and their category names.

``build_detector(name, weights)`` returns a ready torchvision detector and its :class:`Categories`.
``weights`` is one of:

- ``"DEFAULT"`` or a torchvision weights enum name (``"COCO_V1"``, or the full
  ``"FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1"``): pretrained; torchvision downloads the file
  into its cache (``$TORCH_HOME``) on first use;
- ``"none"``: random initialisation (tests, benchmarks of speed alone); category names are those
  of the model's default weights, so outputs keep their meaning;
- a checkpoint URI written by ``detbatch train`` (a ``.pt`` file, or a folder holding ``model.pt``),
  loaded with ``torch.load(weights_only=True)``; it names its model and categories itself.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

from detbatch.config import ConfigError
from detbatch.errors import InputError

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "detbatch.checkpoint/1"

# name -> (builder's module attribute, keyword for the score threshold, keyword for detections per image).
# torchvision's two-stage and one-stage detectors spell these two settings differently.
_TORCHVISION_DETECTORS: dict[str, tuple[str, str]] = {
    "fasterrcnn_resnet50_fpn": ("box_score_thresh", "box_detections_per_img"),
    "fasterrcnn_resnet50_fpn_v2": ("box_score_thresh", "box_detections_per_img"),
    "fasterrcnn_mobilenet_v3_large_fpn": ("box_score_thresh", "box_detections_per_img"),
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("box_score_thresh", "box_detections_per_img"),
    "retinanet_resnet50_fpn": ("score_thresh", "detections_per_img"),
    "retinanet_resnet50_fpn_v2": ("score_thresh", "detections_per_img"),
    "fcos_resnet50_fpn": ("score_thresh", "detections_per_img"),
    "ssd300_vgg16": ("score_thresh", "detections_per_img"),
    "ssdlite320_mobilenet_v3_large": ("score_thresh", "detections_per_img"),
}



def _tiny_fcos(**kwargs: Any) -> "torch.nn.Module":
    from detbatch.models.tiny import tiny_fcos

    return tiny_fcos(**kwargs)


# Extra builders (detbatch's own small models) register here: name -> builder(num_classes, **kwargs).
EXTRA_MODELS: dict[str, Callable[..., "torch.nn.Module"]] = {"tiny_fcos": _tiny_fcos}


def model_names() -> list[str]:
    return sorted([*_TORCHVISION_DETECTORS, *EXTRA_MODELS])


def check_model_name(name: str) -> None:
    if name not in _TORCHVISION_DETECTORS and name not in EXTRA_MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")


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


@dataclass(frozen=True)
class LoadedDetector:
    model: "torch.nn.Module"
    categories: Categories
    name: str
    weights: str
    """What was loaded: an enum's full name, ``none``, or the checkpoint URI."""


def _weights_enum(name: str, weights: str):
    """Resolve ``DEFAULT`` / ``COCO_V1`` / ``Enum.COCO_V1`` into the model's weights enum member."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    member = weights.split(".", 1)[1] if weights.startswith(enum.__name__ + ".") else weights
    try:
        return enum[member] if member != "DEFAULT" else enum.DEFAULT
    except KeyError:
        valid = ", ".join(["DEFAULT", *enum.__members__, "none", "<checkpoint URI>"])
        raise ConfigError(f"unknown weights {weights!r} for {name}; choose one of: {valid}") from None


def is_checkpoint_uri(weights: str) -> bool:
    """Whether ``--weights`` names a checkpoint (a path or URI) rather than torchvision weights or ``none``."""
    return "/" in weights or weights.endswith(".pt") or "://" in weights


def check_weights(name: str, weights: str) -> None:
    """Fail fast, on the driver, on a model or weights name that no actor could load."""
    from detbatch import storage

    if weights.lower() == "none":
        check_model_name(name)
    elif is_checkpoint_uri(weights):
        path = weights if weights.endswith(".pt") else storage.join(weights, "model.pt")
        fs, fs_path = storage.resolve(path)
        if not fs.exists(fs_path):
            raise InputError(f"checkpoint {path} not found (check --weights)")
    else:
        check_model_name(name)
        if name not in _TORCHVISION_DETECTORS:
            raise ConfigError(f"{name} has no torchvision weights; give --weights none or a checkpoint URI")
        _weights_enum(name, weights)


def build_model(
    name: str,
    num_classes: int | None = None,
    weights: Any = None,
    weights_backbone: Any = None,
    score_threshold: float = 0.05,
    detections_per_image: int = 100,
    **kwargs: Any,
) -> "torch.nn.Module":
    """Construct detector ``name``; ``weights`` is a torchvision enum member or None."""
    check_model_name(name)
    if name in EXTRA_MODELS:
        return EXTRA_MODELS[name](
            num_classes=num_classes,
            score_threshold=score_threshold,
            detections_per_image=detections_per_image,
            **kwargs,
        )
    import torchvision.models.detection as detection

    score_kw, per_image_kw = _TORCHVISION_DETECTORS[name]
    kwargs = {score_kw: score_threshold, per_image_kw: detections_per_image, **kwargs}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return getattr(detection, name)(weights=weights, weights_backbone=weights_backbone, **kwargs)


def default_categories(name: str) -> Categories:
    """Category names of ``name``'s default weights (COCO for every torchvision detector)."""
    from torchvision.models import get_model_weights

    return Categories.from_names(list(get_model_weights(name).DEFAULT.meta["categories"]))


def load_checkpoint(uri: str) -> dict[str, Any]:
    """Read a detbatch checkpoint (``.pt`` file, or a folder with ``model.pt``) safely."""
    import torch

    from detbatch import storage

    path = uri if uri.endswith(".pt") else storage.join(uri, "model.pt")
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise InputError(
            f"checkpoint {path} not found; --weights takes DEFAULT, a torchvision weights name, "
            f"none, or a checkpoint written by `detbatch train`"
        ) from None
    except Exception as e:
        raise storage.StorageError(storage.describe_error(path, e)) from e
    ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not a detbatch checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return ckpt


def checkpoint_dict(
    model: "torch.nn.Module", name: str, categories: Categories, model_kwargs: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """The checkpoint payload ``load_checkpoint`` reads back (``extra``: optimizer state, epoch, ...)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": {"name": name, "kwargs": dict(model_kwargs or {})},
        "categories": categories.to_list(),
        "state_dict": model.state_dict(),
        **extra,
    }


def build_detector(
    name: str,
    weights: str = "DEFAULT",
    score_threshold: float = 0.05,
    detections_per_image: int = 100,
) -> LoadedDetector:
    """A detector in eval mode on CPU, with its categories. See the module docstring for ``weights``."""
    if weights.lower() == "none":
        check_model_name(name)
        categories = default_categories(name) if name in _TORCHVISION_DETECTORS else None
        if categories is None:
            raise ConfigError(f"{name} has no pretrained categories; give --weights a checkpoint URI")
        model = build_model(name, categories.num_classes, None, None, score_threshold, detections_per_image)
        loaded_as = "none"
    elif is_checkpoint_uri(weights):
        ckpt = load_checkpoint(weights)
        saved = ckpt["model"]["name"]
        if saved != name:
            logger.info("checkpoint %s holds a %s; using it instead of %s", weights, saved, name)
        name = saved
        categories = Categories.from_list(ckpt["categories"])
        model = build_model(
            name,
            categories.num_classes,
            None,
            None,
            score_threshold,
            detections_per_image,
            **ckpt["model"].get("kwargs", {}),
        )
        model.load_state_dict(ckpt["state_dict"])
        loaded_as = weights
    else:
        check_model_name(name)
        if name not in _TORCHVISION_DETECTORS:
            raise ConfigError(f"{name} has no torchvision weights; give --weights none or a checkpoint URI")
        enum_member = _weights_enum(name, weights)
        categories = Categories.from_names(list(enum_member.meta["categories"]))
        model = build_model(name, None, enum_member, None, score_threshold, detections_per_image)
        loaded_as = f"{type(enum_member).__name__}.{enum_member.name}"
    model.eval()
    return LoadedDetector(model=model, categories=categories, name=name, weights=loaded_as)


# Prior probability of a foreground class in a fresh one-stage classifier (RetinaNet's focal-loss init):
# the first steps then see small, stable losses instead of every anchor voting for every class.
_PRIOR_PROBABILITY = 0.01


def replace_box_predictor(model: "torch.nn.Module", num_classes: int) -> None:
    """Give ``model`` a fresh, randomly initialised classifier for ``num_classes`` labels (background included).

    Only the last layer(s) that depend on the number of classes are replaced: Faster R-CNN's
    ``box_predictor`` (class scores and class-specific box deltas), RetinaNet's and FCOS's ``cls_logits``
    conv, SSD's per-level class convs. Everything else (backbone, FPN, RPN, conv towers, box regression of
    one-stage models) keeps its weights.
    """
    import math

    from torch import nn
    from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    def fresh_conv(old: nn.Conv2d, out_channels: int, prior: bool) -> nn.Conv2d:
        conv = nn.Conv2d(old.in_channels, out_channels, old.kernel_size, old.stride, old.padding,
                         groups=old.groups, bias=old.bias is not None)  # fmt: skip
        nn.init.normal_(conv.weight, std=0.01)
        if conv.bias is not None:
            nn.init.constant_(conv.bias, -math.log((1 - _PRIOR_PROBABILITY) / _PRIOR_PROBABILITY) if prior else 0.0)
        return conv.to(old.weight.device)

    if isinstance(model, FasterRCNN):
        old = model.roi_heads.box_predictor
        model.roi_heads.box_predictor = FastRCNNPredictor(old.cls_score.in_features, num_classes).to(
            old.cls_score.weight.device
        )
    elif isinstance(model, (RetinaNet, FCOS)):
        head = model.head.classification_head
        head.cls_logits = fresh_conv(head.cls_logits, head.num_anchors * num_classes, prior=True)
        head.num_classes = num_classes
    elif isinstance(model, SSD):
        head = model.head.classification_head
        for i, block in enumerate(head.module_list):
            last = block if isinstance(block, nn.Conv2d) else block[-1]
            conv = fresh_conv(last, last.out_channels // head.num_columns * num_classes, prior=False)
            if isinstance(block, nn.Conv2d):
                head.module_list[i] = conv
            else:
                block[-1] = conv
        head.num_columns = num_classes
    else:
        raise ConfigError(f"cannot replace the box predictor of a {type(model).__name__}; detbatch knows "
                         f"FasterRCNN, RetinaNet, FCOS and SSD")  # fmt: skip
