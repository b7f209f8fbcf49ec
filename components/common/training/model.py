"""The model factory: torchvision ResNets, ResNet-152 with 1,000 classes by default."""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models

from visionnode.components.common.artifacts import IMAGENET_MEAN, IMAGENET_STD
from visionnode.components.common.errors import ConfigError
from visionnode.components.common.training.archs import SUPPORTED_DEPTHS

RESNET152_PARAMETERS = 60_192_808


def build_resnet(depth: int = 152, num_classes: int = 1000, zero_init_residual: bool = True,
                 width: int = 64) -> nn.Module:
    """A randomly initialised torchvision ResNet (no weights are downloaded).

    `zero_init_residual` starts each residual branch at identity (Goyal et al.), as the torchvision and
    FFCV ImageNet recipes do; it makes deep ResNets train stably from the first steps. `width` is the first
    stage's channels (every torchvision ResNet has 64, doubled at each stage); a narrower ResNet-18 or -34
    is validate's cheap LR probe model (lr_probe.py).
    """
    if depth not in SUPPORTED_DEPTHS:
        raise ConfigError(f"ResNet depth {depth} is not supported", f"use one of {SUPPORTED_DEPTHS}")
    if num_classes < 2:
        raise ConfigError(f"num_classes={num_classes} is too small", "a classifier needs at least 2 classes")
    if width != 64:
        if depth not in BASIC_BLOCK_LAYERS or width < 8:
            raise ConfigError(f"a ResNet-{depth} of width {width} is not built",
                              "narrow only ResNet-18 or -34, to a width of at least 8 (default 64)")
        return NarrowResNet(BASIC_BLOCK_LAYERS[depth], num_classes, width, zero_init_residual)
    factory = getattr(models, f"resnet{depth}")
    return factory(weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual)


BASIC_BLOCK_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class NarrowResNet(models.ResNet):
    """torchvision's ResNet-18/34 with stage widths w, 2w, 4w, 8w: torchvision fixes w at 64 (its
    `width_per_group` widens only Bottleneck blocks), so the stem and stages are built here with its own
    `_make_layer`, and its `forward` is kept."""

    def __init__(self, layers: tuple[int, ...], num_classes: int, width: int, zero_init_residual: bool):
        nn.Module.__init__(self)
        self._norm_layer, self.dilation, self.groups, self.base_width = nn.BatchNorm2d, 1, 1, 64
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(models.resnet.BasicBlock, width, layers[0])
        self.layer2 = self._make_layer(models.resnet.BasicBlock, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(models.resnet.BasicBlock, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(models.resnet.BasicBlock, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width, num_classes)
        for module in self.modules():  # torchvision's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
        for module in self.modules():  # after the loop above, which visits each block before its bn2
            if isinstance(module, models.resnet.BasicBlock) and zero_init_residual:
                nn.init.constant_(module.bn2.weight, 0)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def normalize_uint8_nchw(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 (or 0..255 float) NCHW images -> normalised float32, the preprocessing every phase shares."""
    scale = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    shift = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return (images.float() - shift) / scale
