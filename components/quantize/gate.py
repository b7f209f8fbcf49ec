"""The INT8 accuracy gate: a paired test of FP32 against INT8 on the same images, not a bare threshold.

FP32 and INT8 answer the same val images, so what tells them apart are the discordant images: those only
FP32 gets right (b) and those only INT8 gets right (c). The drop is (b - c) / images. On a few hundred images
one image is several tenths of a point, and a bare "drop > max_accuracy_drop" turns on a handful of images:
two runs of the same data ended differently (issue 31). The gate therefore fails only when the drop is both
larger than `max_accuracy_drop` and significant: when the drop's one-sided 95 % lower confidence bound
(exact, conditional on the b + c discordant images, i.e. McNemar's setting; common/stats.py) exceeds
`max_accuracy_drop`. A measured drop above the threshold whose bound is not says so ("too few images to
tell") and passes with a warning, in the summary, the metrics and the KFP UI.
"""

from __future__ import annotations

from dataclasses import dataclass

from visionnode.components.common.stats import CONFIDENCE, mcnemar_exact_p, paired_drop_lower_bound
from visionnode.components.quantize.accuracy import AccuracyReport

PASS, WARN, FAIL = "pass", "pass with warning", "fail"
RULE = (f"fail only when the drop's one-sided {CONFIDENCE:.0%} lower confidence bound (exact, conditional on "
        "the images where only one of FP32 and INT8 is right) exceeds --max-accuracy-drop")


@dataclass
class GateDecision:
    verdict: str                 # PASS, WARN or FAIL
    drop_pts: float              # FP32 top-1 - INT8 top-1
    drop_lower_bound_pts: float  # its one-sided lower confidence bound
    max_drop: float
    images: int
    fp32_only_right: int
    int8_only_right: int
    mcnemar_p: float             # one-sided exact McNemar test of "INT8 is worse" (drop > 0)
    message: str

    @property
    def passed(self) -> bool:
        return self.verdict != FAIL

    @property
    def warning(self) -> bool:
        return self.verdict == WARN

    def metrics(self) -> dict[str, float]:
        return {"quality_gate_passed": float(self.passed), "quality_gate_warning": float(self.warning),
                "drop_lower_bound_pts": self.drop_lower_bound_pts, "mcnemar_p": self.mcnemar_p}


def judge_accuracy(report: AccuracyReport, max_drop: float) -> GateDecision:
    """The gate's decision on a FP32-vs-INT8 comparison (module doc)."""
    b, c, n = report.fp32_only_right, report.int8_only_right, report.images
    bound = paired_drop_lower_bound(b, c, n)
    p_value = mcnemar_exact_p(b, c)
    if bound > max_drop:
        verdict = FAIL
        reading = (f"its lower bound {bound:.2f} pts is above --max-accuracy-drop {max_drop:g}: INT8 is "
                   "significantly worse by more than allowed")
    elif report.top1_drop_pts > max_drop:
        verdict = WARN
        reading = (f"more than --max-accuracy-drop {max_drop:g}, but its lower bound {bound:.2f} pts is not: "
                   f"too few images to tell (one image is {report.points_per_image:.2f} pts); passed, judge "
                   "INT8 on more val images")
    else:
        verdict, reading = PASS, f"within --max-accuracy-drop {max_drop:g} (lower bound {bound:.2f} pts)"
    message = (f"INT8 top-1 drop {report.top1_drop_pts:.2f} pts (FP32 {report.fp32_top1:.2f} % -> INT8 "
               f"{report.int8_top1:.2f} % on the same {n} val images; only FP32 right on {b}, only INT8 "
               f"right on {c}, McNemar p {p_value:.3g}): {reading}. Rule: {RULE}.")
    return GateDecision(verdict, report.top1_drop_pts, bound, max_drop, n, b, c, p_value, message)


def gate_markdown(decision: GateDecision) -> str:
    """The decision for the KFP UI (a Markdown artifact)."""
    title = {PASS: "passed", WARN: "passed with a warning", FAIL: "FAILED"}[decision.verdict]
    return "\n".join([
        f"# INT8 accuracy gate: {title}", "", decision.message, "",
        "| figure | value |", "|---|---|",
        f"| images compared | {decision.images} |",
        f"| drop (FP32 - INT8 top-1) | {decision.drop_pts:.2f} pts |",
        f"| {CONFIDENCE:.0%} lower bound of the drop | {decision.drop_lower_bound_pts:.2f} pts |",
        f"| max_accuracy_drop | {decision.max_drop:g} pts |",
        f"| only FP32 right / only INT8 right | {decision.fp32_only_right} / {decision.int8_only_right} |",
        f"| McNemar p (INT8 worse) | {decision.mcnemar_p:.3g} |", ""])
