"""The LR probe: a short successive-halving sweep of candidate peak LRs, judged on held-out loss.

Each candidate trains a copy of the same initial model on the same batches with train's optimiser (SGD +
Nesterov, label smoothing) and a run of its own in miniature: linear warm-up over the first quarter of its
steps, then cosine decay to 0, as train's schedule does over epochs. After `first_round_steps` steps every
candidate's loss on held-out images is measured; the best third (successive halving with eta = 3, Jamieson &
Talwalkar 2016; Hyperband's inner loop) runs again from the same start, 3x as long, and is judged again,
until one is left. That candidate's LR is the suggestion. Candidates the held-out images cannot tell apart
(within one standard error of the best loss) rank largest LR first (`ranked`). Judging each at the end of
its own decayed schedule matters: judged mid-flight at its peak (the first version of this probe), a high LR
is caught while it still shakes the weights; and without the tie rule the probe picked 0.03 on the digits
(its 24-step losses 2.13 against 2.22) where 0.1 trains better over epochs (66 % against 49 %).

Why not the LR range test it replaces (fastai's `lr_find`): its few dozen steps at ever higher LRs measure
where an untrained network with fresh BatchNorm statistics stops diverging, not which LR trains best over
several epochs. On real images (sklearn's digits, issue 31) its suggestion (0.006) trained to 62 % where 0.1
reached 96 %. The probe instead trains each candidate a little and asks the question train cares about: on
images it has not seen, which LR has the lowest loss?

Held-out loss is measured with BatchNorm in batch-statistics mode (train mode, no gradient): after a few
dozen steps the running statistics still lag the weights, and an eval-mode loss would judge that lag, not the
LR. The winner's held-out top-1 is reported as `promised_top1`: what a small model reached after a few
dozen steps on a subset, a floor that a full training run should clear (train notes when it does not).

The caller owns model and data: `probe_lr` takes a model factory (a fresh model, or copies of the one about to
be trained), a list of train batches and a list of held-out batches, so validate (its smoke model on the
in-memory subset) and train (`--lr auto`: the real model on shard batches) share one procedure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from visionnode.components.common.errors import ConfigError

if TYPE_CHECKING:  # importable without torch: the CLIs build their defaults from LRProbeConfig at start-up
    import torch
    from torch import nn

    from visionnode.components.common.training.recipe import Recipe

# Half a decade apart, from the batch rule's LR at batch 32 (0.0125) to where SGD on a fresh ResNet starts to
# diverge: the top four of issue 31's grid (0.003, its fifth, sits 4x below the batch rule).
CANDIDATE_LRS = (0.01, 0.03, 0.1, 0.3)
ETA = 3  # successive halving keeps the best 1/ETA of the candidates and trains them ETA x as long


@dataclass
class LRProbeConfig:
    first_round_steps: int = 10          # steps every candidate trains before the first judgement
    candidates: tuple[float, ...] = CANDIDATE_LRS
    heldout_share: float = 0.25          # of the probe's images, kept aside for judging

    def checked(self) -> LRProbeConfig:
        if self.first_round_steps < 4:
            raise ConfigError(f"--lr-probe-steps {self.first_round_steps} is too few for an LR probe",
                              f"use at least 4 (default {LRProbeConfig.first_round_steps}), or 0 to skip the "
                              "probe")
        if len(self.candidates) < 2 or min(self.candidates) <= 0:
            raise ConfigError("the LR probe needs at least two positive candidate LRs")
        if not 0 < self.heldout_share < 1:
            raise ConfigError(f"held-out share {self.heldout_share} is out of range", "use 0 < share < 1")
        return self

    def rounds(self) -> list[tuple[int, int]]:
        """(candidates trained, total steps each has trained when judged) per round."""
        out, alive, steps = [], len(self.candidates), self.first_round_steps
        while True:
            out.append((alive, steps))
            if alive == 1:
                return out
            alive, steps = max(1, math.ceil(alive / ETA)), steps * ETA

    @property
    def total_steps(self) -> int:
        """Optimizer steps the whole probe runs (its cost: each is one train step of the probe model)."""
        return sum(alive * steps for alive, steps in self.rounds()[:-1])

    @property
    def max_steps(self) -> int:
        """Steps the longest-trained candidate runs: how many train batches the probe needs."""
        return self.rounds()[-2][1] if len(self.rounds()) > 1 else self.first_round_steps


@dataclass
class Judgement:
    lr: float
    steps: int
    heldout_loss: float          # mean cross-entropy (no label smoothing) on the held-out images
    heldout_loss_se: float       # its standard error (per-image losses' standard deviation / sqrt(images))
    heldout_top1: float          # percent


@dataclass
class LRProbeResult:
    candidates: list[float]
    judgements: list[Judgement]  # every candidate at every round it reached, in order
    suggested_lr: float
    promised_top1: float         # the winner's held-out top-1 at its last judgement (percent)
    heldout_images: int
    train_images: int
    steps_run: int
    seconds: float
    rounds: list[list[float]] = field(default_factory=list)  # the LRs alive in each round

    def metrics(self) -> dict[str, float]:
        return {"suggested_lr": self.suggested_lr, "lr_probe_seconds": self.seconds,
                "lr_probe_steps": float(self.steps_run), "lr_probe_top1": self.promised_top1,
                "lr_probe_heldout_images": float(self.heldout_images)}

    def summary_line(self) -> str:
        last = [j for j in self.judgements if j.steps == self.judgements[-1].steps]
        ranked = ", ".join(f"{j.lr:g}: {j.heldout_loss:.3f}" for j in sorted(last, key=lambda j: j.lr))
        return (f"LR probe: {self.suggested_lr:g} of {', '.join(f'{c:g}' for c in self.candidates)} "
                f"(held-out loss after {last[0].steps} steps: {ranked}; {self.steps_run} steps, "
                f"{self.seconds:.1f} s)")


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
          precision: Callable[[], AbstractContextManager]) -> Judgement:
    """Held-out loss and top-1 with batch statistics (module doc)."""
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
    if not bool(torch.isfinite(per_image).all()):
        return Judgement(lr, steps, math.inf, math.inf, 100.0 * hits / len(per_image))
    standard_error = float(per_image.std()) / math.sqrt(len(per_image)) if len(per_image) > 1 else 0.0
    return Judgement(lr, steps, float(per_image.mean()), standard_error, 100.0 * hits / len(per_image))


def ranked(judged: list[Judgement]) -> list[Judgement]:
    """Best first: the candidates whose held-out loss is within one standard error of the lowest, the
    largest LR first, then the rest by loss.

    The one-standard-error rule (Breiman et al. 1984; Hastie et al., "Elements of Statistical Learning" 7.10)
    picks among candidates the data cannot tell apart; here it breaks such ties towards the larger LR, since
    a few dozen steps under-rate large LRs (the short-horizon bias, Wu et al. 2018): on sklearn's digits,
    every candidate's held-out loss after 8 steps was within 0.06 of chance (2.30), while at 6 epochs 0.1
    trained to 66 % and 0.03 to 49 %."""
    best = min(judged, key=lambda j: j.heldout_loss)
    tied = sorted((j for j in judged if j.heldout_loss <= best.heldout_loss + best.heldout_loss_se),
                  key=lambda j: -j.lr)
    return tied + sorted((j for j in judged if j not in tied), key=lambda j: j.heldout_loss)


def probe_lr(make_model: Callable[[], nn.Module], batches: Batches,
             heldout: Batches, recipe: Recipe, config: LRProbeConfig,
             precision: Callable[[], AbstractContextManager] = nullcontext,
             advance: Callable[[int], None] = lambda n: None) -> LRProbeResult:
    """Successive halving over `config.candidates` (module doc). `batches` are used in order (cycled)."""
    config.checked()
    if not batches or not heldout:
        raise ConfigError("the LR probe needs train and held-out images", "give it a larger subset")
    started = time.perf_counter()
    alive = list(config.candidates)
    judgements: list[Judgement] = []
    rounds: list[list[float]] = []
    schedule = config.rounds()
    for index, (_, steps) in enumerate(schedule[:-1]):  # the last round's single survivor is the winner
        rounds.append(list(alive))
        scored = []
        for lr in alive:
            model = train_candidate(lr, make_model(), steps, batches, recipe, precision, advance)
            scored.append(judge(lr, steps, model, heldout, precision))
            del model
        judgements += scored
        alive = [j.lr for j in ranked(scored)[: schedule[index + 1][0]]]
    final = next(j for j in reversed(judgements) if j.lr == alive[0])
    return LRProbeResult(
        candidates=list(config.candidates), judgements=judgements, suggested_lr=alive[0],
        promised_top1=final.heldout_top1, heldout_images=sum(len(y) for _, y in heldout),
        train_images=sum(len(y) for _, y in batches), steps_run=sum(j.steps for j in judgements),
        seconds=time.perf_counter() - started, rounds=rounds)


def lr_probe_figure(result: LRProbeResult, title: str) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    figure = Figure(figsize=(6.4, 3.6))
    axes = figure.add_subplot()
    for steps in sorted({j.steps for j in result.judgements}):
        points = sorted((j.lr, j.heldout_loss) for j in result.judgements
                        if j.steps == steps and math.isfinite(j.heldout_loss))
        if points:
            axes.plot(*zip(*points), marker="o", label=f"after {steps} steps")
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
