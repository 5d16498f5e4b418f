"""The threshold calibrated to a false-positive budget (:class:`BudgetThreshold`) and the
flooding warning.

A budget ``b`` (default 1% of keys). The null is fitted to the bulk of the scores: an exponential
upper tail through the median and the ``BULK_QUANTILE`` quantile gives the ``1 - b`` quantile,
kept within ``[z(1 - b), EVIDENCE_CEILING]``: never below the nominal z of the budget (a window
of ordinary users does not flag its largest just because someone must be), never above the
ceiling (evidence that strong is flagged however many keys show it).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

FP_BUDGET = 0.01  # share of legitimate keys the threshold may flag
BULK_QUANTILE = 0.75  # the null's spread: from the median to this quantile of the scores
MIN_BULK_USERS = 20  # fewer keys: the nominal z of the budget is the threshold
EVIDENCE_CEILING = 5.0  # z: evidence this strong is flagged whatever the population does
FLOOD_FACTOR = 5.0  # warn when this many times the budget's share is flagged
FLOOD_MIN_SHARE = 0.05


class BudgetThreshold:
    """``fit(score)`` sets ``threshold_`` (the score at and above which keys are flagged) and
    ``method_`` (how it was chosen, in words)."""

    def __init__(self, fp_budget: float = FP_BUDGET) -> None:
        if not 0.0 < fp_budget < 0.5:
            raise ValueError(f"the false-positive budget must be in (0, 0.5), not {fp_budget}")
        self.fp_budget = fp_budget

    def fit(self, score: np.ndarray) -> BudgetThreshold:
        fp_budget = self.fp_budget
        z = NormalDist().inv_cdf(1.0 - fp_budget)
        s = np.asarray(score, dtype=np.float64)
        s = s[np.isfinite(s)]
        bulk = z
        if len(s) >= MIN_BULK_USERS:
            median, upper = np.quantile(s, [0.5, BULK_QUANTILE])
            # an exponential upper tail through the median and the BULK_QUANTILE quantile
            decay = math.log(0.5 / fp_budget) / math.log(0.5 / (1.0 - BULK_QUANTILE))
            bulk = float(median + max(upper - median, 0.0) * decay)
        self.threshold_ = float(np.clip(bulk, z, EVIDENCE_CEILING))
        self.method_ = (
            f"the {1 - fp_budget:.0%} quantile of an exponential-tailed null fitted to the bulk "
            f"(median and "
            f"{BULK_QUANTILE:.0%} quantile of the scores): false-positive budget {fp_budget:.2%}, "
            f"kept within [{z:.2f}, {EVIDENCE_CEILING:g}] z"
        )
        return self


def choose_threshold(score: np.ndarray, fp_budget: float = FP_BUDGET) -> tuple[float, str]:
    """``(threshold_, method_)`` of a :class:`BudgetThreshold` fitted to ``score``."""
    fitted = BudgetThreshold(fp_budget).fit(score)
    return fitted.threshold_, fitted.method_


def flagged_share_warning(score: np.ndarray, threshold: float, fp_budget: float) -> str | None:
    """A warning when far more keys than the budget cross the threshold: many keys attacking at
    once (flooding), or traffic unlike the reference."""
    s = np.asarray(score, dtype=np.float64)
    share = float(np.mean(s >= threshold)) if len(s) else 0.0
    if share <= FLOOD_FACTOR * fp_budget or share < FLOOD_MIN_SHARE:
        return None
    return (
        f"{share:.1%} of keys are flagged, {share / fp_budget:.0f}x the false-positive budget "
        f"of {fp_budget:.1%}: many keys behave alike (flooding by one actor?) or the traffic is "
        "unlike the reference; review before trusting the ranking"
    )
