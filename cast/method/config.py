"""Parameters of the method: model, crop sampling, augmentation and losses.

Field names are the keys of the ``pretrain`` group of ``params.yaml``, so one
mapping feeds both the command line and :meth:`MethodConfig.from_mapping`.
Defaults follow the released CAST command (ResNet-50, 224-pixel crops,
``alpha`` 3, ``beta`` 1) and the released augmentations.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cast.errors import ConfigError
from cast.method.gradcam import gradcam_resolution
from cast.options import add_option

METHODS = ("moco", "cast")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _param(default: Any, help: str, **rules: Any) -> Any:
    """Declare a field with its help text and validation rules, stored in the field metadata."""
    return field(default=default, metadata={"help": help, **rules})


@dataclass(frozen=True)
class MethodConfig:
    """Every parameter of MoCo and CAST that the training step and the crop sampler read."""

    arch: str = _param("resnet50", "torchvision ResNet architecture of both encoders (resnet18, resnet50, resnext50_32x4d, ...)")
    image_size: int = _param(224, "side of the square training crops, in pixels", minimum=32)
    moco_dim: int = _param(128, "dimension of the projected features", minimum=1)
    moco_k: int = _param(65536, "queue size K: number of negative keys; a multiple of the global batch size", minimum=1)
    moco_m: float = _param(0.999, "momentum of the key encoder update, in [0, 1]", minimum=0.0, maximum=1.0)
    moco_t: float = _param(0.07, "softmax temperature of the contrastive logits", exclusive_minimum=0.0)
    mlp: bool = _param(False, "use a two-layer MLP projection head (MoCo v2) instead of a linear one")
    alpha: float = _param(3.0, "weight of the attention loss; the total loss is beta/(alpha+beta) * contrastive + alpha/(alpha+beta) * attention", minimum=0.0)
    beta: float = _param(1.0, "weight of the contrastive loss, normalized together with alpha (see alpha)", minimum=0.0)
    scale: tuple[float, float] = _param((0.2, 1.0), "range of the crop area as a fraction of the image area", interval=(0.0, 1.0))
    ratio: tuple[float, float] = _param((0.75, 1.3333333333), "range of the crop aspect ratio (width / height)", interval=(0.0, math.inf))
    min_areacover: float = _param(
        0.2, "fraction of the salient pixels of each constraint box that a crop must contain", minimum=0.0, maximum=1.0
    )
    second_constraint: str = _param(
        "ref", "constraint boxes of the key crop: 'ref' = mask bounding box only, 'all' = also the query box", choices=("ref", "all")
    )
    output_mask_region: str = _param(
        "ref", "crop masks: 'ref' = whole crop, 'all' = zeroed outside the overlap of the two crops", choices=("ref", "all")
    )
    max_crop_attempts: int = _param(10, "rejected crop boxes before falling back to a box around the mask", minimum=1)
    gradcam_layer: str = _param("layer4", "module of the query encoder whose activations Grad-CAM uses (a get_submodule path)")
    gradcam_relu: bool = _param(False, "apply ReLU to the Grad-CAM map before min-max normalization (the released code does not)")
    attention_reduction: str = _param(
        "batch", "cosine of the attention loss over the whole batch as one vector ('batch') or per sample, then averaged ('sample')",
        choices=("batch", "sample"),
    )
    momentum_updates: int = _param(2, "key encoder momentum updates per CAST step: 2 = before each key encoder call, 1 = before the first", choices=(1, 2))
    clip_grad_norm: float = _param(2.0, "maximum gradient norm of the query encoder; 0 disables clipping", minimum=0.0)
    hflip_p: float = _param(0.5, "probability of a horizontal flip of each crop and its mask", minimum=0.0, maximum=1.0)
    grayscale_p: float = _param(0.2, "probability of converting each crop to grayscale", minimum=0.0, maximum=1.0)
    jitter_p: float = _param(0.5, "probability of colour jitter on each crop", minimum=0.0, maximum=1.0)
    brightness: float = _param(0.4, "colour jitter brightness strength", minimum=0.0)
    contrast: float = _param(0.4, "colour jitter contrast strength", minimum=0.0)
    saturation: float = _param(0.4, "colour jitter saturation strength", minimum=0.0)
    hue: float = _param(0.4, "colour jitter hue shift, as a fraction of the hue circle, in [0, 0.5]", minimum=0.0, maximum=0.5)
    blur_p: float = _param(0.0, "probability of Gaussian blur on each crop (MoCo v2 uses 0.5)", minimum=0.0, maximum=1.0)
    blur_sigma: tuple[float, float] = _param((0.1, 2.0), "range of the Gaussian blur sigma, in pixels of the crop", interval=(0.0, math.inf))
    mean: tuple[float, float, float] = _param(IMAGENET_MEAN, "per-channel mean for normalization (RGB, 0-1 scale)")
    std: tuple[float, float, float] = _param(IMAGENET_STD, "per-channel standard deviation for normalization (RGB, 0-1 scale)", exclusive_minimum=0.0)

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            object.__setattr__(self, item.name, _check_value(item, getattr(self, item.name)))
        if self.alpha + self.beta <= 0:
            raise ConfigError(f"alpha ({self.alpha}) and beta ({self.beta}) are both 0; set at least one to a positive weight")
        _check_architecture(self.arch)
        # Raises ConfigError for a layer name that the architecture lacks.
        gradcam_resolution(self.arch, self.image_size, self.gradcam_layer)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "MethodConfig":
        """Build a configuration from a mapping such as ``vars(args)``; keys that are not fields are ignored."""
        names = {item.name for item in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})

    def to_dict(self) -> dict[str, Any]:
        """Return the parameters as plain values (lists instead of tuples), as stored in checkpoints."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(self).items()}


def add_method_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Register every field of :class:`MethodConfig` as a ``--name`` option with its default."""
    for item in dataclasses.fields(MethodConfig):
        help_text = f"{item.metadata['help']} (default: {_format_default(item.default)})"
        kwargs: dict[str, Any] = {"default": item.default, "help": help_text}
        if isinstance(item.default, tuple):
            metavar = ("LOW", "HIGH") if len(item.default) == 2 else ("R", "G", "B")
            kwargs.update(nargs=len(item.default), type=float, default=list(item.default), metavar=metavar)
        elif isinstance(item.default, (int, float)) and not isinstance(item.default, bool):
            kwargs["type"] = type(item.default)
        if "choices" in item.metadata:
            kwargs["choices"] = item.metadata["choices"]
        add_option(parser, item.name, **kwargs)


def _format_default(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(str(number) for number in value)
    return str(value)


def _check_value(item: dataclasses.Field, value: Any) -> Any:
    """Return ``value`` converted to the field's type, or raise ConfigError naming the field."""
    name, default, rules = item.name, item.default, item.metadata
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, not {value!r}")
        return value
    if isinstance(default, tuple):
        value = _check_numbers(name, value, len(default))
        for number in value:
            _check_range(name, number, rules)
        if "interval" in rules:
            low, high = rules["interval"]
            if not (low < value[0] <= value[1] <= high):
                upper = "" if math.isinf(high) else f" <= {high}"
                raise ConfigError(
                    f"{name} must be two numbers with {low} < low <= high{upper}, not {list(value)}; "
                    f"for example {list(default)}"
                )
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(f"{name} must be an integer, not {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, not {value!r}")
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{name} must be a non-empty string, not {value!r}")
    if "choices" in rules and value not in rules["choices"]:
        choices = ", ".join(repr(choice) for choice in rules["choices"])
        raise ConfigError(f"{name} must be one of {choices}, not {value!r}")
    if isinstance(value, (int, float)):
        _check_range(name, value, rules)
    return value


def _check_numbers(name: str, value: Any, length: int) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != length:
        raise ConfigError(f"{name} must be a list of {length} numbers, not {value!r}")
    numbers = []
    for number in value:
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise ConfigError(f"{name} must be a list of {length} finite numbers, not {value!r}")
        numbers.append(float(number))
    return tuple(numbers)


def _check_range(name: str, value: float, rules: Mapping[str, Any]) -> None:
    if "minimum" in rules and value < rules["minimum"]:
        raise ConfigError(f"{name} must be at least {rules['minimum']}, not {value}")
    if "maximum" in rules and value > rules["maximum"]:
        raise ConfigError(f"{name} must be at most {rules['maximum']}, not {value}")
    if "exclusive_minimum" in rules and value <= rules["exclusive_minimum"]:
        raise ConfigError(f"{name} must be greater than {rules['exclusive_minimum']}, not {value}")


def resnet_architectures() -> list[str]:
    """Return the names of the torchvision ResNet family builders (ResNet, ResNeXt, Wide ResNet)."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    return sorted(name for name in names if name.startswith(("resnet", "resnext", "wide_resnet")))


def _check_architecture(arch: str) -> None:
    known = resnet_architectures()
    if arch not in known:
        raise ConfigError(f"arch {arch!r} is not a torchvision ResNet; choose one of {', '.join(known)}")
