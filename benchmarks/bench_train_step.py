"""Train-step throughput of ResNet-152 on CPU or CUDA: fp32 eager (baseline) vs channels_last vs mixed
precision (bf16 autocast; on CUDA also fp16 with a GradScaler), + torch.compile with --compile. Modes run
interleaved, one step each per round, so machine noise hits all of them alike; medians and the ratio to the
baseline are printed.

    .venv/bin/python benchmarks/bench_train_step.py [--device cpu|cuda] [--resolution 128] [--batch 16]
                                                          [--rounds 5] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from visionnode.components.common.training.model import build_resnet
from visionnode.components.common.training.recipe import Recipe, build_optimizer
from visionnode.components.train.precision import autocast, cpu_has_fast_bf16, grad_scaler


@dataclass
class Mode:
    name: str
    precision: str
    channels_last: bool
    compile: bool


def make_step(mode: Mode, batch: int, resolution: int, classes: int, device: torch.device):
    torch.manual_seed(0)
    memory_format = torch.channels_last if mode.channels_last else torch.contiguous_format
    model = build_resnet(152, classes).to(device, memory_format=memory_format).train()
    optimizer = build_optimizer(model, Recipe(), batch)
    scaler = grad_scaler(mode.precision, device)
    net = torch.compile(model) if mode.compile else model
    images = torch.randn(batch, 3, resolution, resolution,
                         device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, classes, (batch,), device=device)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)

    def step() -> float:
        synchronize(device)
        start = time.perf_counter()
        with autocast(mode.precision, device):
            loss = criterion(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        synchronize(device)
        return time.perf_counter() - start

    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def modes_for(device: torch.device, with_compile: bool) -> list[Mode]:
    modes = [Mode("fp32 eager (baseline)", "fp32", False, False),
             Mode("fp32 + channels_last", "fp32", True, False),
             Mode("bf16 autocast + channels_last", "bf16", True, False)]
    if device.type == "cuda":
        modes.append(Mode("fp16 autocast + scaler + channels_last", "fp16", True, False))
    if with_compile:
        modes.append(Mode("bf16 + channels_last + compile", "bf16", True, True))
    return modes


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    return (f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
            f"AMX-BF16 (auto picks bf16) {cpu_has_fast_bf16()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--compile", action="store_true",
                        help="also measure bf16 + channels_last + torch.compile")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but PyTorch sees no CUDA GPU")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    modes = modes_for(device, args.compile)
    print(f"ResNet-152 train step (fwd+bwd+SGD), {args.batch}x3x{args.resolution}x{args.resolution}, "
          f"torch {torch.__version__}, {describe(device)}")
    steps = {m.name: make_step(m, args.batch, args.resolution, args.classes, device) for m in modes}
    for name, step in steps.items():
        started = time.perf_counter()
        for _ in range(args.warmup):
            step()
        print(f"  warm-up {name}: {time.perf_counter() - started:.1f} s")
    times: dict[str, list[float]] = {m.name: [] for m in modes}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(step())
    baseline = args.batch / statistics.median(times[modes[0].name])
    print(f"{'mode':40s} {'median img/s':>12s} {'ratio':>7s}  step times (s)")
    for mode in modes:
        rate = args.batch / statistics.median(times[mode.name])
        print(f"{mode.name:40s} {rate:12.2f} {rate / baseline:6.2f}x  "
              + " ".join(f"{t:.3f}" for t in times[mode.name]))
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB (all modes' models "
              "together)")


if __name__ == "__main__":
    main()
