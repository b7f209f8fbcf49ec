"""Champion/challenger: is the candidate good enough to replace the model serving now?

Promote only when the SLO is met AND the candidate's top-1 is not lower than the champion's by more than
`max_top1_regression` points, both measured through Triton on the same labelled val images. With no champion
yet the SLO alone decides; with a champion but no labelled images to compare on, the candidate is refused
(an accuracy loss could not be ruled out).
"""

from __future__ import annotations

from dataclasses import dataclass

# Top-1 figures are means over a few hundred images: a difference below this is float noise, not a loss.
_EPSILON_PTS = 1e-9


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str          # one line: why (both reasons when both rules refuse)


def decide(slo_met: bool, slo_verdict: str, candidate_top1: float | None, champion_top1: float | None,
           max_top1_regression: float, champion_note: str = "") -> Decision:
    """The promotion rule; top-1 figures in percent, `max_top1_regression` in percentage points;
    `champion_note` (how the champion's top-1 was counted, when unusual) ends the comparison's text."""
    refusals = [] if slo_met else [slo_verdict]
    if champion_top1 is None:
        accuracy = "no champion to compare top-1 with"
    elif candidate_top1 is None:
        accuracy = "no labelled val images to compare top-1 with the champion's"
        refusals.append(accuracy)
    else:
        drop = champion_top1 - candidate_top1
        noted = f"; {champion_note}" if champion_note else ""
        accuracy = (f"top-1 {candidate_top1:.2f} % vs the champion's {champion_top1:.2f} % "
                    f"(at most {max_top1_regression:g} points lower allowed{noted})")
        if drop > max_top1_regression + _EPSILON_PTS:
            refusals.append(f"top-1 {candidate_top1:.2f} % is {drop:.2f} points below the champion's "
                            f"{champion_top1:.2f} % (at most {max_top1_regression:g} allowed{noted})")
    if refusals:
        return Decision(False, "; ".join(refusals))
    return Decision(True, f"{slo_verdict}; {accuracy}")
