"""How sure a measured accuracy is: Wilson intervals for one model, McNemar's exact test for two models on the
same images (scipy's binomial test does the arithmetic)."""

from __future__ import annotations

from dataclasses import dataclass

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    low: float       # percent
    high: float      # percent

    def __str__(self) -> str:
        return f"{self.low:.1f}-{self.high:.1f} %"


def wilson_interval(hits: int, total: int, confidence: float = CONFIDENCE) -> Interval:
    """Two-sided Wilson score interval of hits / total, in percent (Wilson 1927; it stays inside 0-100 and
    is honest at small totals, where the normal approximation is not)."""
    from scipy.stats import binomtest

    if total <= 0:
        return Interval(0.0, 100.0)
    interval = binomtest(hits, total).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(100.0 * interval.low, 100.0 * interval.high)


def accuracy_interval(top1_pct: float, total: int, confidence: float = CONFIDENCE) -> Interval:
    """The Wilson interval of a top-1 percentage measured on `total` images."""
    return wilson_interval(round(top1_pct * total / 100.0), total, confidence)


def mcnemar_exact_p(only_first_right: int, only_second_right: int) -> float:
    """One-sided exact McNemar test that the first model is the more accurate one: of the n discordant
    images (one model right, the other wrong), the chance of `only_first_right` or more going the first's
    way if each were a fair coin (Binomial(n, 1/2)). 1.0 when there are none."""
    from scipy.stats import binomtest

    discordant = only_first_right + only_second_right
    if discordant == 0:
        return 1.0
    return float(binomtest(only_first_right, discordant, 0.5, alternative="greater").pvalue)


def paired_drop_lower_bound(only_first_right: int, only_second_right: int, total: int,
                            confidence: float = CONFIDENCE) -> float:
    """One-sided lower confidence bound, in points, of the accuracy drop from the first model to the second,
    both judged on the same `total` images.

    Exact and conditional on the n discordant images (McNemar's setting): the drop is n (2p - 1) / total,
    where p is the share of discordant images only the first model gets right; p's one-sided Clopper-Pearson
    lower bound (the Beta(k, n - k + 1) quantile) gives the drop's. With no discordant image the drop is
    exactly 0. A bound above 0 is the exact McNemar test rejecting "no drop" at 1 - confidence."""
    from scipy.stats import beta

    discordant = only_first_right + only_second_right
    if discordant == 0 or total <= 0:
        return 0.0
    share_low = 0.0 if only_first_right == 0 else float(
        beta.ppf(1 - confidence, only_first_right, discordant - only_first_right + 1))
    return 100.0 * discordant * (2 * share_low - 1) / total
