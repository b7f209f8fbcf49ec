"""The LR probe: a short sweep of candidate peak LRs, each trained a little and judged on held-out loss.

Each candidate trains a copy of the same initial model on the same batches with train's optimiser (SGD +
Nesterov, label smoothing) for `steps` steps, a run of its own in miniature: linear warm-up over the first
quarter, then cosine decay to 0, as train's schedule does over epochs. Then each candidate's cross-entropy on
held-out images is measured. The suggestion is the smallest LR whose held-out loss the images cannot tell
from the lowest: within one standard error of the per-image loss gap (a paired comparison, since every
candidate answers the same images; the one-standard-error rule of Breiman et al. 1984, tilted to the safer
LR). Judging each at the end of its own decayed schedule matters: judged mid-flight at its peak, a high LR
is caught while it still shakes the weights.

Why one round of 60 steps, not successive halving (Jamieson & Talwalkar 2016) over shorter rounds, nor the LR
range test (fastai's `lr_find`): both judge too early. A high LR looks worst in the first steps and best
after enough of them (the short-horizon bias, Wu et al. 2018). On the textures of issue 31's panel, 0.3 was
the grid's best over 6 epochs; after 10 steps its held-out loss was the worst (2.81 against 1.61), so
successive halving dropped it in its first round, and after 90 steps it was the lowest at every seed. The
range test measures where an untrained network stops diverging: on sklearn's digits its suggestion (0.006)
trained to 62 % where 0.1 reached 96 %. The candidates are the top three of issue 31's grid; below them the
batch rule (0.0125 at batch 32) is the fallback.

Why ties go to the smaller LR: validate probes with a half-width ResNet-18 (a third of the time per step),
and the narrower network prefers larger LRs than the one it stands in for (on the panel after 90 steps, one
candidate higher on digits, scenes and faces). Where the held-out images cannot tell two candidates apart,
the smaller is the one the full-width model is likelier to prefer.

No signal, no suggestion: when even the lowest held-out loss is not two standard errors below chance (the
entropy of the held-out labels, the loss of a model that learnt only how often each class occurs), the
candidates' ranking is noise and the probe suggests nothing (train keeps the batch rule). On the panel's
generated clutter data every candidate stayed at chance after 60 steps, and the lowest loss fell on 0.3,
the grid's worst LR there.

Held-out loss is measured with BatchNorm in batch-statistics mode (train mode, no gradient): after a few
dozen steps the running statistics still lag the weights, and an eval-mode loss would judge that lag, not the
LR. The lowest-loss candidate's held-out top-1 is reported as `promised_top1`: what a small model reached
after a few dozen steps on a subset, a floor that a full training run should clear (train notes when it
does not).

The caller owns model and data: `probe_lr` takes a model factory (a fresh model, or copies of the one about to
be trained), a list of train batches and a list of held-out batches, so validate (a half-width ResNet-18 on
its in-memory subset) and train (`--lr auto`: the real model on shard batches) share one procedure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from visionnode.components.common.errors import ConfigError

if TYPE_CHECKING:  # importable without torch: the CLIs build their defaults from LRProbeConfig at start-up
    import torch
    from torch import nn

    from visionnode.components.common.training.recipe import Recipe

# Half a decade apart, the top three of issue 31's grid: from where the batch rule (0.0125 at batch 32, the
# fallback) leaves off to where SGD on a fresh ResNet starts to diverge.
CANDIDATE_LRS = (0.03, 0.1, 0.3)
SIGNAL_STANDARD_ERRORS = 2.0  # how far below chance the winner's held-out loss must be to count


@dataclass
class LRProbeConfig:
    steps: int = 60                      # steps each candidate trains before it is judged
    candidates: tuple[float, ...] = CANDIDATE_LRS
    heldout_share: float = 0.25          # of the probe's images, kept aside for judging

    def checked(self) -> LRProbeConfig:
        if self.steps < 4:
            raise ConfigError(f"--lr-probe-steps {self.steps} is too few for an LR probe",
                              f"use at least 4 (default {LRProbeConfig.steps}), or 0 to skip the probe")
        if len(self.candidates) < 2 or min(self.candidates) <= 0:
            raise ConfigError("the LR probe needs at least two positive candidate LRs")
        if not 0 < self.heldout_share < 1:
            raise ConfigError(f"held-out share {self.heldout_share} is out of range", "use 0 < share < 1")
        return self

    @property
    def total_steps(self) -> int:
        """Optimizer steps the whole probe runs (its cost: each is one train step of the probe model)."""
        return self.steps * len(self.candidates)


@dataclass
class Judgement:
    lr: float
    steps: int
    heldout_loss: float          # mean cross-entropy (no label smoothing) on the held-out images
    heldout_loss_se: float       # its standard error (per-image losses' standard deviation / sqrt(images))
    heldout_top1: float          # percent
    gap_se: float = 0.0          # standard error of its loss minus the lowest's, image by image (paired)


@dataclass
class LRProbeResult:
    candidates: list[float]
    judgements: list[Judgement]  # one per candidate, in order
    suggested_lr: float | None   # None: no signal (module doc), train keeps the batch rule
    promised_top1: float         # the lowest-loss candidate's held-out top-1 (percent)
    chance_loss: float           # the held-out labels' entropy
    heldout_images: int
    train_images: int
    steps_run: int
    seconds: float

    def metrics(self) -> dict[str, float]:
        return {"suggested_lr": self.suggested_lr or 0.0, "lr_probe_seconds": self.seconds,
                "lr_probe_steps": float(self.steps_run), "lr_probe_top1": self.promised_top1,
                "lr_probe_chance_loss": self.chance_loss,
                "lr_probe_heldout_images": float(self.heldout_images)}

    def summary_line(self) -> str:
        losses = ", ".join(f"{j.lr:g}: {j.heldout_loss:.3f}" for j in self.judgements)
        judged = (f"held-out loss after {self.judgements[0].steps} steps: {losses}; chance "
                  f"{self.chance_loss:.3f}; {self.steps_run} steps, {self.seconds:.1f} s")
        if self.suggested_lr is None:
            best = lowest(self.judgements)
            return (f"LR probe: no suggestion ({judged}): the lowest loss, {best.heldout_loss:.3f} ± "
                    f"{best.heldout_loss_se:.3f}, is not {SIGNAL_STANDARD_ERRORS:g} standard errors "
                    "below chance, so the ranking is noise and the batch rule stays")
        return f"LR probe: {self.suggested_lr:g} of {', '.join(f'{c:g}' for c in self.candidates)} ({judged})"


def lowest(judgements: list[Judgement]) -> Judgement:
    return min(judgements, key=lambda j: j.heldout_loss)


def mini_schedule_factor(step: int, steps: int) -> float:
    """The probe's one-cycle over `steps`: linear warm-up from 0.1x over the first quarter, cosine to 0."""
    warmup = max(1, steps // 4)
    if step < warmup:
        return 0.1 + 0.9 * step / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


Batches = Sequence[tuple["torch.Tensor", "torch.Tensor"]]


def train_candidate(lr: float, model: nn.Module, steps: int, batches: Batches, recipe: Recipe,
                    precision: Callable[[], AbstractContextManager],
                    advance: Callable[[int], None]) -> nn.Module:
    """`steps` optimiser steps of train's recipe at peak `lr` on `batches` (cycled) with the mini schedule."""
    from torch import nn

    from visionnode.components.common.training.recipe import build_optimizer

    optimizer = build_optimizer(model, replace(recipe, lr=lr), global_batch=1)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    model.train()
    for step in range(steps):
        images, labels = batches[step % len(batches)]
        for group in optimizer.param_groups:
            group["lr"] = lr * mini_schedule_factor(step, steps)
        with precision():
            loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        advance(1)
        if not math.isfinite(float(loss.item())):
            break  # diverged: its held-out loss is infinite, and it is dropped
    return model


def judge(lr: float, steps: int, model: nn.Module, heldout: Batches,
          precision: Callable[[], AbstractContextManager]) -> tuple[Judgement, torch.Tensor]:
    """Held-out loss and top-1 with batch statistics (module doc), and the per-image losses."""
    import torch

    model.train()
    losses, hits = [], 0
    with torch.no_grad():
        for images, labels in heldout:
            with precision():
                logits = model(images).float()
            losses.append(torch.nn.functional.cross_entropy(logits, labels, reduction="none"))
            hits += int((logits.argmax(dim=1) == labels).sum())
    per_image = torch.cat(losses).double()
    top1 = 100.0 * hits / len(per_image)
    if not bool(torch.isfinite(per_image).all()):
        return Judgement(lr, steps, math.inf, math.inf, top1), per_image
    return Judgement(lr, steps, float(per_image.mean()), standard_error(per_image), top1), per_image


def standard_error(values: torch.Tensor) -> float:
    return float(values.std()) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def with_paired_gaps(scored: list[tuple[Judgement, torch.Tensor]]) -> list[Judgement]:
    """The judgements with `gap_se` set: the standard error of each one's per-image loss minus the lowest
    one's, on the same held-out images (a paired comparison: far tighter than either loss's own error)."""
    best_losses = min(scored, key=lambda pair: pair[0].heldout_loss)[1]
    return [replace(judgement, gap_se=standard_error(losses - best_losses)
                    if math.isfinite(judgement.heldout_loss) else math.inf)
            for judgement, losses in scored]


def label_entropy(heldout: Batches) -> float:
    """Cross-entropy of predicting the held-out labels' own frequencies: chance for the probe."""
    import torch

    labels = torch.cat([labels for _, labels in heldout])
    shares = torch.bincount(labels).double() / len(labels)
    shares = shares[shares > 0]
    return float(-(shares * shares.log()).sum())


def suggestion(judgements: list[Judgement], chance_loss: float) -> float | None:
    """The smallest LR whose held-out loss is within one paired standard error of the lowest, or None when
    the lowest is not clearly below chance (module doc)."""
    best = lowest(judgements)
    if best.heldout_loss + SIGNAL_STANDARD_ERRORS * best.heldout_loss_se >= chance_loss:
        return None
    return min(j.lr for j in judgements if j.heldout_loss - best.heldout_loss <= j.gap_se)


def probe_lr(make_model: Callable[[], nn.Module], batches: Batches,
             heldout: Batches, recipe: Recipe, config: LRProbeConfig,
             precision: Callable[[], AbstractContextManager] = nullcontext,
             advance: Callable[[int], None] = lambda n: None) -> LRProbeResult:
    """Every candidate trained `config.steps` steps and judged (module doc). `batches` are used in order
    (cycled)."""
    config.checked()
    if not batches or not heldout:
        raise ConfigError("the LR probe needs train and held-out images", "give it a larger subset")
    started = time.perf_counter()
    scored = []
    for lr in config.candidates:
        model = train_candidate(lr, make_model(), config.steps, batches, recipe, precision, advance)
        scored.append(judge(lr, config.steps, model, heldout, precision))
        del model
    judgements = with_paired_gaps(scored)
    chance = label_entropy(heldout)
    return LRProbeResult(
        candidates=list(config.candidates), judgements=judgements,
        suggested_lr=suggestion(judgements, chance), promised_top1=lowest(judgements).heldout_top1,
        chance_loss=chance,
        heldout_images=sum(len(y) for _, y in heldout), train_images=sum(len(y) for _, y in batches),
        steps_run=config.total_steps,
        seconds=time.perf_counter() - started)


def lr_probe_figure(result: LRProbeResult, title: str) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    figure = Figure(figsize=(6.4, 3.6))
    axes = figure.add_subplot()
    judged = [j for j in result.judgements if math.isfinite(j.heldout_loss)]
    if judged:
        axes.errorbar([j.lr for j in judged], [j.heldout_loss for j in judged],
                      yerr=[SIGNAL_STANDARD_ERRORS * j.heldout_loss_se for j in judged], marker="o",
                      capsize=3,
                      label=f"after {result.judgements[0].steps} steps (± {SIGNAL_STANDARD_ERRORS:g} SE)")
    axes.axhline(result.chance_loss, color="tab:gray", linestyle=":", label="chance (label entropy)")
    if result.suggested_lr is not None:
        axes.axvline(result.suggested_lr, color="tab:red", linestyle="--",
                     label=f"chosen {result.suggested_lr:g}")
    axes.set_xscale("log")
    axes.set_xlabel("peak learning rate")
    axes.set_ylabel("held-out cross-entropy")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def promise_note(top1: float, val_images: int, promised_top1: float, heldout_images: int) -> str | None:
    """One line when top-1 is far below what the LR probe promised, else None.

    "Promised" is the probe winner's held-out top-1: a small model after a few dozen steps on a subset, a
    floor for a full run. "Far below": the top of top-1's 95 % Wilson interval lies under the bottom of the
    promise's, so the shortfall is not the noise of two small image sets."""
    from visionnode.components.common.stats import accuracy_interval

    got = accuracy_interval(top1, val_images)
    promised = accuracy_interval(promised_top1, heldout_images)
    if got.high >= promised.low:
        return None
    return (f"top-1 {top1:.1f} % (95 % CI {got}, {val_images} images) is far below the {promised_top1:.1f} % "
            f"({promised}, {heldout_images} held-out images) the LR probe's model reached in a few dozen "
            "steps: training went wrong (LR, warm-up, augmentation too strong for these images?)")
