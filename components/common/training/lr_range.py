"""Learning-rate range test (Smith 2017, "Cyclical Learning Rates"; fastai's `lr_find`).

Train a few dozen steps while the learning rate grows exponentially from `min_lr` to `max_lr`, smooth the
loss (exponential moving average with bias correction), stop once it diverges (smoothed loss above
`diverge_factor` x its best), and suggest a third of the LR at which the smoothed loss is lowest, clamped to
`band`. That is Smith's practice (2017, sec. 3.3: the LR where the loss stops falling is the upper bound, and
"a third or a fourth" of it the lower one) and fastai's `minimum` suggestion (min-loss LR / 10, on a curve
smoothed with 0.98 that trails its raw loss by more than the 0.8-smoothed curve here). The smoothed minimum
trails the raw one (an EMA's mean lag is beta / (1 - beta) = 4 steps, 0.4 decades at the default 40 steps
over 4), so a third of it lies near where the raw loss stopped falling: the largest LR that still trains
well, which suits train's schedule (short warm-up to the peak, then cosine decay, like Smith's one-cycle).

Why not the steepest fall (fastai's `steep`, this module's first rule, kept as `steepest_lr` for the report):
on a few dozen steps of a small dataset the loss falls fastest while the network is still warming up, often
well below the LR that trains best (measured in README, "Training on your own data").

The caller owns model, data and optimizer: `lr_range_test` only drives a `step(lr) -> loss` callable, so
validate (a fresh smoke-training model on in-memory batches) and train (the real model on shard batches,
weights restored afterwards with `preserved_state`) share the same procedure.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from visionnode.components.common.errors import ConfigError

if TYPE_CHECKING:  # importable without torch: the CLIs build their defaults from LRRangeConfig at start-up
    from torch import nn


@dataclass
class LRRangeConfig:
    steps: int = 40              # optimizer steps at most (stops earlier when the loss diverges)
    min_lr: float = 1e-4
    max_lr: float = 1.0
    # EMA beta; fastai's 0.98 suits its 100 steps, here the lag would be 1+ decade
    smoothing: float = 0.8
    diverge_factor: float = 4.0  # stop when the smoothed loss exceeds this x the best smoothed loss
    min_loss_divisor: float = 3.0  # the suggestion is the smoothed loss's minimum LR over this (module doc)
    band_low: float = 1e-3       # the suggestion is clamped to [band_low, band_high]
    band_high: float = 1.0

    def checked(self) -> LRRangeConfig:
        if self.steps < 8:
            raise ConfigError(f"--lr-range-steps {self.steps} is too few for an LR range test",
                              "use at least 8 (default 40), or 0 to skip the test")
        if not 0 < self.min_lr < self.max_lr or not 0 < self.band_low <= self.band_high:
            raise ConfigError(f"LR range {self.min_lr:g}..{self.max_lr:g} (band {self.band_low:g}.."
                              f"{self.band_high:g}) is invalid",
                              "use 0 < min_lr < max_lr and 0 < low <= high")
        if not 0 <= self.smoothing < 1 or self.diverge_factor <= 1 or self.min_loss_divisor < 1:
            raise ConfigError("LR range smoothing, divergence factor or min-loss divisor is out of range",
                              "use 0 <= smoothing < 1, diverge_factor > 1 and min_loss_divisor >= 1")
        return self


@dataclass
class LRRangeResult:
    lrs: list[float]             # the LR of each step run
    losses: list[float]          # raw loss of each step
    smoothed: list[float]        # bias-corrected EMA of `losses`
    steepest_lr: float           # where the smoothed loss falls fastest (before its minimum); a diagnostic
    min_loss_lr: float           # where the smoothed loss is lowest
    suggested_lr: float          # min_loss_lr / min_loss_divisor, clamped to the band
    clamped: bool
    diverged: bool               # stopped early because the loss blew up
    seconds: float


def exponential_lrs(config: LRRangeConfig) -> list[float]:
    ratio = (config.max_lr / config.min_lr) ** (1 / (config.steps - 1))
    return [config.min_lr * ratio**i for i in range(config.steps)]


def smooth(losses: list[float], beta: float) -> list[float]:
    """Exponential moving average with bias correction (no pull towards 0 in the first steps)."""
    average, out = 0.0, []
    for i, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta**i))
    return out


def steepest_descent_lr(lrs: list[float], smoothed: list[float], window_decades: float = 0.5,
                        skip: int = 3) -> float:
    """The LR where the smoothed loss falls fastest per decade of LR, looking only up to its minimum.

    The slope is taken over `window_decades` of LR (a one-step difference of a few dozen noisy steps picks
    noise), ignoring the first `skip` steps (the bias-corrected average still rests on one or two losses).
    Returns the geometric middle of the steepest window; the first LR when the loss never falls.
    """
    end = min(range(len(smoothed)), key=smoothed.__getitem__)
    decades_per_step = math.log10(lrs[1] / lrs[0])
    width = max(1, round(window_decades / decades_per_step))
    starts = range(min(skip, max(0, end - width)), end - width + 1)
    if not starts:
        return lrs[0]
    best = min(starts, key=lambda i: smoothed[i + width] - smoothed[i])
    return math.sqrt(lrs[best] * lrs[best + width])


def min_loss_lr(lrs: list[float], smoothed: list[float]) -> float:
    """The LR at which the smoothed loss is lowest."""
    return lrs[min(range(len(smoothed)), key=smoothed.__getitem__)]


def lr_range_test(step: Callable[[float], float], config: LRRangeConfig,
                  advance: Callable[[int], None] | None = None) -> LRRangeResult:
    """Call `step(lr)` (one optimizer step at that LR, returning the loss) at exponentially growing LRs."""
    config.checked()
    started = time.perf_counter()
    lrs: list[float] = []
    losses: list[float] = []
    diverged = False
    for lr in exponential_lrs(config):
        loss = step(lr)
        if not math.isfinite(loss):
            diverged = True
            break
        lrs.append(lr)
        losses.append(loss)
        if advance is not None:
            advance(1)
        smoothed = smooth(losses, config.smoothing)
        if smoothed[-1] > config.diverge_factor * min(smoothed):
            diverged = True
            break
    if len(losses) < 2:
        raise ConfigError(f"the LR range test diverged at its first steps (lr {config.min_lr:g})",
                          "check the data and model; the loss is not finite at the smallest LR")
    smoothed = smooth(losses, config.smoothing)
    lowest = min_loss_lr(lrs, smoothed)
    rule_lr = lowest / config.min_loss_divisor
    suggested = min(max(rule_lr, config.band_low), config.band_high)
    return LRRangeResult(
        lrs=lrs, losses=losses, smoothed=smoothed, steepest_lr=steepest_descent_lr(lrs, smoothed),
        min_loss_lr=lowest, suggested_lr=suggested,
        clamped=suggested != rule_lr, diverged=diverged, seconds=time.perf_counter() - started)


@contextmanager
def preserved_state(module: nn.Module) -> Iterator[None]:
    """Restore the module's parameters and buffers (BN running stats) on exit: the test must not train it."""
    saved = copy.deepcopy(module.state_dict())
    try:
        yield
    finally:
        module.load_state_dict(saved)


def lr_range_figure(result: LRRangeResult, title: str):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    figure = Figure(figsize=(6.4, 3.6))
    axes = figure.add_subplot()
    axes.plot(result.lrs, result.losses, color="tab:blue", alpha=0.35, label="loss per step")
    axes.plot(result.lrs, result.smoothed, color="tab:blue", label="smoothed (EMA)")
    axes.axvline(result.suggested_lr, color="tab:red", linestyle="--",
                 label=f"suggested {result.suggested_lr:.3g}" + (" (clamped)" if result.clamped else ""))
    axes.axvline(result.min_loss_lr, color="tab:gray", linestyle=":",
                 label=f"min loss {result.min_loss_lr:.3g}")
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return figure
