"""What a ``weights`` string names: :func:`parse_weights`, the one reading of ``--weights`` and ``model.weights``.

``weights`` is one of:

- ``"DEFAULT"`` or a torchvision weights enum name (``"COCO_V1"``, or the full
  ``"FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1"``): pretrained; torchvision downloads the file
  into its cache (``$TORCH_HOME``) on first use;
- ``"none"`` (any case): random initialisation (tests, benchmarks of speed alone);
- a checkpoint URI written by ``detbatch train`` (a ``.pt`` file, or a folder holding ``model.pt``; see
  :mod:`detbatch.models.checkpoint`); it names its model and categories itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

from detbatch.config import ConfigError
from detbatch.models.checkpoint import check_checkpoint_exists, is_checkpoint_uri
from detbatch.models.zoo import MODELS, check_model_name


@dataclass(frozen=True)
class WeightsSpec:
    """A ``weights`` string, read (see the module docstring)."""

    kind: Literal["torchvision", "none", "checkpoint"]
    weights: str
    """What to load: the enum member's full name (``SSD300_VGG16_Weights.COCO_V1``), ``none``, or the
    checkpoint URI as given."""
    member: "WeightsEnum | None" = None
    """``torchvision``: the weights enum member, for the builder's ``weights=``; None otherwise."""


def parse_weights(model_name: str | None, weights: str) -> WeightsSpec:
    """Read ``weights`` for detector ``model_name``, checking the names; reads no file.

    ``model_name`` may be None with a checkpoint, which names its own model (and so is not checked either).
    Raises :class:`ConfigError` naming the bad model or weights and the choices.
    """
    if is_checkpoint_uri(weights):
        return WeightsSpec("checkpoint", weights)
    if model_name is None:
        raise ConfigError(f"--weights {weights!r} is not a checkpoint: give --model to say which detector it is for")
    check_model_name(model_name)
    if weights.lower() == "none":
        return WeightsSpec("none", "none")
    if not MODELS[model_name].torchvision:
        raise ConfigError(f"{model_name} has no torchvision weights; give --weights none or a checkpoint URI")
    member = _weights_member(model_name, weights)
    return WeightsSpec("torchvision", f"{type(member).__name__}.{member.name}", member)


def check_weights(name: str | None, weights: str) -> WeightsSpec:
    """Fail fast, on the driver, on a model or weights name that no actor could load, or a missing checkpoint."""
    spec = parse_weights(name, weights)
    if spec.kind == "checkpoint":
        check_checkpoint_exists(spec.weights)
    return spec


def _weights_member(name: str, weights: str) -> "WeightsEnum":
    """Resolve ``DEFAULT`` / ``COCO_V1`` / ``Enum.COCO_V1`` into the model's weights enum member."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    member = weights.split(".", 1)[1] if weights.startswith(enum.__name__ + ".") else weights
    try:
        return enum[member] if member != "DEFAULT" else enum.DEFAULT
    except KeyError:
        valid = ", ".join(["DEFAULT", *enum.__members__, "none", "<checkpoint URI>"])
        raise ConfigError(f"unknown weights {weights!r} for {name}; choose one of: {valid}") from None
