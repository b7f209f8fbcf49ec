"""The model factory: torchvision ResNets, ResNet-152 with 1,000 classes by default."""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models

from visionnode.components.common.artifacts import IMAGENET_MEAN, IMAGENET_STD
from visionnode.components.common.errors import ConfigError

RESNET152_PARAMETERS = 60_192_808
SUPPORTED_DEPTHS = (18, 34, 50, 101, 152)


def arch_name(depth: int) -> str:
    return f"resnet{depth}"


def depth_from_arch(arch: str) -> int:
    if not arch.startswith("resnet") or not arch[6:].isdigit() or int(arch[6:]) not in SUPPORTED_DEPTHS:
        raise ConfigError(f"unknown architecture '{arch}'",
                          f"use one of {', '.join(arch_name(d) for d in SUPPORTED_DEPTHS)}")
    return int(arch[6:])


def build_resnet(depth: int = 152, num_classes: int = 1000, zero_init_residual: bool = True) -> nn.Module:
    """A randomly initialised torchvision ResNet (no weights are downloaded).

    `zero_init_residual` starts each residual branch at identity (Goyal et al.), as the torchvision and
    FFCV ImageNet recipes do; it makes deep ResNets train stably from the first steps.
    """
    if depth not in SUPPORTED_DEPTHS:
        raise ConfigError(f"ResNet depth {depth} is not supported", f"use one of {SUPPORTED_DEPTHS}")
    if num_classes < 2:
        raise ConfigError(f"num_classes={num_classes} is too small", "a classifier needs at least 2 classes")
    factory = getattr(models, arch_name(depth))
    return factory(weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def normalize_uint8_nchw(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 (or 0..255 float) NCHW images -> normalised float32, the preprocessing every phase shares."""
    scale = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    shift = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return (images.float() - shift) / scale
