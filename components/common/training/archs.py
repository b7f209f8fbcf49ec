"""The ResNets this project builds, by name, importable without torch: configs check `arch` against them."""

from __future__ import annotations

from visionnode.components.common.errors import ConfigError

SUPPORTED_DEPTHS = (18, 34, 50, 101, 152)
ARCHS = tuple(f"resnet{depth}" for depth in SUPPORTED_DEPTHS)


def depth_from_arch(arch: str) -> int:
    if arch not in ARCHS:
        raise ConfigError(f"unknown architecture '{arch}'", f"use one of {', '.join(ARCHS)}")
    return int(arch.removeprefix("resnet"))
