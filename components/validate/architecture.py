"""Integrity of the real ResNet-152: 1,000-class output, parameter count, a gradient in every tensor."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from visionnode.components.common.training.model import RESNET152_PARAMETERS, build_resnet, count_parameters

IMAGENET_CLASSES = 1000
ARCHITECTURE_UNDER_TEST = "resnet152"
# Train mode BatchNorm needs more than one value per channel; 2 images at 64 px keep the check ~1 s.
ARCH_CHECK_BATCH = 2
ARCH_CHECK_SIZE = 64


@dataclass
class GradientProblem:
    parameter: str
    problem: str


@dataclass
class ArchitectureCheck:
    arch: str
    parameters: int
    expected_parameters: int
    output_shape: list[int]
    expected_output_shape: list[int]
    parameter_tensors: int
    gradient_problems: list[GradientProblem]
    passed: bool
    diagnosis: str
    seconds: float


def check_architecture(
    tamper: Callable[[nn.Module], None] | None = None,
    batch: int = ARCH_CHECK_BATCH,
    image_size: int = ARCH_CHECK_SIZE,
    seed: int = 0,
) -> ArchitectureCheck:
    """One forward/backward pass of the real ResNet-152; names every parameter without a usable gradient.

    `tamper` is applied to the model before the pass (tests use it to freeze a layer or zero a gradient).
    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    # zero_init_residual=False here: with the zero-initialised last BN of each block (the training default)
    # every layer inside a residual branch legitimately has an exactly-zero gradient on the first step,
    # which would hide a genuinely disconnected layer.
    model = build_resnet(152, IMAGENET_CLASSES, zero_init_residual=False).train()
    if tamper is not None:
        tamper(model)
    inputs = torch.randn(batch, 3, image_size, image_size)
    targets = torch.randint(0, IMAGENET_CLASSES, (batch,))
    output = model(inputs)
    nn.functional.cross_entropy(output, targets).backward()
    problems = [
        GradientProblem(name, problem)
        for name, problem in ((name, gradient_problem(p)) for name, p in model.named_parameters())
        if problem
    ]
    parameters = count_parameters(model)
    tensors = len(list(model.parameters()))
    expected_shape = [batch, IMAGENET_CLASSES]
    failures = []
    if list(output.shape) != expected_shape:
        failures.append(f"output shape {list(output.shape)} != {expected_shape}")
    if parameters != RESNET152_PARAMETERS:
        failures.append(f"{parameters:,} parameters != {RESNET152_PARAMETERS:,}")
    if problems:
        named = ", ".join(f"{p.parameter} ({p.problem})" for p in problems[:8])
        more = f" and {len(problems) - 8} more" if len(problems) > 8 else ""
        failures.append(f"{len(problems)} parameter tensor(s) without a usable gradient: {named}{more}")
    diagnosis = (
        "; ".join(failures)
        if failures
        else (
            f"output {expected_shape}, {parameters:,} parameters, all {tensors} parameter "
            f"tensors have finite, non-zero gradients"
        )
    )
    return ArchitectureCheck(
        arch=ARCHITECTURE_UNDER_TEST,
        parameters=parameters,
        expected_parameters=RESNET152_PARAMETERS,
        output_shape=list(output.shape),
        expected_output_shape=expected_shape,
        parameter_tensors=tensors,
        gradient_problems=problems,
        passed=not failures,
        diagnosis=diagnosis,
        seconds=time.perf_counter() - started,
    )


def gradient_problem(parameter: nn.Parameter) -> str | None:
    if not parameter.requires_grad:
        return "frozen: requires_grad is False"
    if parameter.grad is None:
        return "no gradient: not reached by backward"
    if not torch.isfinite(parameter.grad).all():
        return "non-finite gradient"
    if not parameter.grad.any():
        return "gradient is all zero"
    return None
