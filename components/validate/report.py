"""validate's Markdown report with its loss-curve and LR probe plots embedded."""

from __future__ import annotations

import base64
import math
from typing import TYPE_CHECKING, Any

from visionnode.components.common.training.lr_probe import SIGNAL_STANDARD_ERRORS, LRProbeResult
from visionnode.components.validate.smoke import SmokeTrainResult

if TYPE_CHECKING:
    from visionnode.components.validate.result import ValidateResult


def loss_curve_figure(smoke: SmokeTrainResult) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    figure = Figure(figsize=(6.4, 3.6))
    axes = figure.add_subplot()
    steps = list(range(1, len(smoke.losses) + 1))
    axes.plot(steps, smoke.losses, marker=".", color="tab:blue", label="loss per step")
    k = smoke.window
    if math.isfinite(smoke.first_mean) and math.isfinite(smoke.last_mean):
        axes.hlines(smoke.first_mean, 1, k, colors="tab:orange", linewidth=2.5, label=f"mean of first {k}")
        axes.hlines(
            smoke.last_mean,
            len(steps) - k + 1,
            len(steps),
            colors="tab:green",
            linewidth=2.5,
            label=f"mean of last {k}",
        )
        axes.axhline(
            smoke.first_mean * (1 - smoke.min_relative_drop),
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label=f"gate: {smoke.min_relative_drop:.0%} below first",
        )
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy loss")
    verdict = "PASS" if smoke.passed else f"FAIL ({smoke.trend})"
    axes.set_title(f"smoke training {smoke.arch}, {smoke.image_size}px, {smoke.images} images: {verdict}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def render_report(result: ValidateResult, plot_png: bytes, lr_probe_png: bytes | None = None) -> str:
    smoke, arch, profile = result.smoke, result.architecture, result.profile
    status = "PASSED" if result.passed else "FAILED"
    data_uri = "data:image/png;base64," + base64.b64encode(plot_png).decode("ascii")
    lines = [
        f"# validate: {status}",
        "",
        (
            f"Data `{result.data}` ({result.split}): {result.num_classes:,} classes, of which "
            f"{result.classes_sampled:,} sampled ({result.images_listed:,} images; only their folders were "
            f"listed); "
            f"{result.images_used:,} of a {result.subset_requested:,}-image subset decoded, "
            f"{len(result.skipped)} unreadable skipped; {len(result.empty_classes)} empty class folder(s). "
            f"Wall time {result.wall_seconds:.1f} s."
        ),
        "",
    ]
    if result.failures:
        lines += ["**Failures**", ""] + [f"- {failure}" for failure in result.failures] + [""]
    lines += [
        "## 1. Smoke training",
        "",
        (
            f"{smoke.arch} ({smoke.num_classes} classes, labels = index of the sorted sampled wnid), "
            f"{smoke.optimizer} lr {smoke.lr:g}, batch {smoke.batch_size}, {smoke.image_size} px, "
            f"{smoke.steps} steps over a fixed in-memory subset of {smoke.images} images "
            f"({smoke.seconds:.1f} s)."
        ),
        "",
        (
            f"Gate: mean loss of the last {smoke.window} steps at least {smoke.min_relative_drop:.0%} "
            f"below the mean of the first {smoke.window}. "
            f"**{'PASS' if smoke.passed else 'FAIL'}** — {smoke.diagnosis}."
        ),
        "",
        f"![loss curve]({data_uri})",
        "",
        "| | first steps | last steps | relative drop |",
        "|---|---|---|---|",
        f"| mean loss | {smoke.first_mean:.4f} | {smoke.last_mean:.4f} | {_pct(smoke.relative_drop)} |",
        "",
        "## 2. Architecture integrity (ResNet-152)",
        "",
        "| check | expected | measured |",
        "|---|---|---|",
        f"| output shape | {arch.expected_output_shape} | {arch.output_shape} |",
        f"| parameters | {arch.expected_parameters:,} | {arch.parameters:,} |",
        (
            f"| parameter tensors with a finite, non-zero gradient | {arch.parameter_tensors} | "
            f"{arch.parameter_tensors - len(arch.gradient_problems)} |"
        ),
        "",
        f"**{'PASS' if arch.passed else 'FAIL'}** — {arch.diagnosis}.",
        "",
    ]
    if arch.gradient_problems:
        lines += ["| parameter | problem |", "|---|---|"]
        lines += [f"| `{p.parameter}` | {p.problem} |" for p in arch.gradient_problems] + [""]
    lines += [
        "## 3. Pipeline profile",
        "",
        (
            f"{profile.arch} train step, batch {profile.batch_size}, {profile.image_size} px, "
            f"{profile.workers} loader workers, {profile.batches} timed batches per stage "
            f"(after one warm-up batch)."
        ),
        "",
        "| stage | images/s |",
        "|---|---|",
        f"| read + decode + augment (DataLoader) | {profile.data_images_per_s:,.1f} |",
        f"| train step on synthetic tensors | {profile.compute_images_per_s:,.1f} |",
        f"| both together | {profile.combined_images_per_s:,.1f} |",
        "",
        f"**Bottleneck: {profile.bottleneck}** — {profile.verdict}",
        "",
    ]
    if result.lr_probe is not None and lr_probe_png is not None:
        lines += render_lr_probe(result.lr_probe, lr_probe_png)
    if result.skipped:
        lines += ["## Skipped files", "", "| file | reason |", "|---|---|"]
        lines += [f"| `{s.path}` | {s.reason} |" for s in result.skipped] + [""]
    if result.empty_classes:
        lines += [f"Empty class folders: {', '.join(f'`{w}`' for w in result.empty_classes)}", ""]
    return "\n".join(lines)


def render_lr_probe(probe: LRProbeResult, png: bytes) -> list[str]:
    data_uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    rows = [f"| {j.lr:g} | {j.steps} | {j.heldout_loss:.3f} ± {j.heldout_loss_se:.3f} | "
            f"{j.heldout_top1:.1f} |" for j in probe.judgements]
    return [
        "## 4. Learning-rate probe",
        "",
        (
            f"Candidates {', '.join(f'{c:g}' for c in probe.candidates)} each trained train's recipe on "
            f"{probe.train_images:,} augmented images and was judged by its loss on {probe.heldout_images} "
            f"held-out images, {probe.steps_run} steps in {probe.seconds:.1f} s."
        ),
        "",
        "| LR | steps | held-out loss ± SE | held-out top-1 % |",
        "|---|---|---|---|",
        *rows,
        "",
        _probe_verdict(probe),
        "",
        f"![LR probe]({data_uri})",
        "",
    ]


def _probe_verdict(probe: LRProbeResult) -> str:
    if probe.suggested_lr is None:
        return (f"**No suggestion:** even the lowest held-out loss is not {SIGNAL_STANDARD_ERRORS:g} "
                f"standard errors below chance ({probe.chance_loss:.3f}, the held-out labels' entropy): the "
                "candidates learnt too little to be ranked, so train keeps the batch rule.")
    return (f"**Suggested LR: {probe.suggested_lr:g}** (held-out top-1 {probe.promised_top1:.1f} %) — train "
            "uses it when its `lr` is auto (`visionnode train --lr auto` runs the same probe on the shards).")


def _pct(value: float) -> str:
    return f"{value:.1%}" if math.isfinite(value) else str(value)


def close_figure(figure: Any) -> None:
    figure.clear()
