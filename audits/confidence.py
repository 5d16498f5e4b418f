"""Confidence monitoring: does each day's traffic get answers like the training data's, or a
sudden run of near-boundary answers?

For every logged response with probabilities, the *confidence* is its largest probability and
the *margin* the largest minus the second largest. Each UTC day's confidences are compared with
the served model's confidences on its training rows and on its holdout rows by the two-sample
Kolmogorov-Smirnov statistic (the largest gap between the two empirical CDFs).

Why KS: confidences are bounded scores with heavy ties near 1, and the monitor compares days of
very different volume. The KS statistic is distribution-free, lies in [0, 1] whatever ``n`` is
(so days, and the train and holdout references, are comparable on one axis and can be plotted as
a trend), is an effect size one can read ("the CDFs differ by at most 8 points"), and costs
O(n log n). Anderson-Darling weighs the tails more but its statistic grows with ``n``, so a
busy day looks worse than a quiet one with the same shift; energy distance needs permutations
for a p-value. The p-values are reported, but with thousands of responses a day almost any
difference is significant, so the alert rules below rest on the statistics themselves.

Alert rules (``alert`` is ``NULL`` on a day that meets neither; both can hold, "; "-joined):

- ``training-like``: the day's confidences are distributed like the training set's rather than
  the holdout's: what traffic replaying training rows (membership probing, or a leak of the
  training set) looks like on an overfit model. It needs a model whose training and holdout
  confidences differ at all: ``reference_gap`` (KS between them) >= ``MIN_REFERENCE_GAP`` with
  p < ``ALPHA``; then the day must differ from holdout (``p_holdout`` < ``ALPHA``), be nearer
  train than holdout (``ks_train`` < ``ks_holdout``) and lie within half the reference gap of
  train (``ks_train`` <= ``reference_gap / 2``). For a day mixing a share ``a`` of replayed
  training rows into holdout-like traffic, ``ks_train ~ (1 - a) * gap`` and
  ``ks_holdout ~ a * gap``: the rule fires once most of the day (``a > 0.5``) looks like
  training, and the last condition keeps traffic unlike both references (off-distribution
  noise the model is sure about) from being called training-like.
- ``low-margin shift``: the share of responses whose margin is below ``low_margin_threshold``
  (the holdout's 10th-percentile margin, so 10% of holdout responses by construction) jumps:
  ``share - baseline >= max(MIN_JUMP, RELATIVE_JUMP * baseline, 3 standard errors)``: up by at
  least 5 points and by a quarter of its baseline, beyond sampling noise (on simulated
  archives, days without boundary probing moved by at most 3.6 points; a day where HopSkipJump
  sends 7% of the traffic moves by about 7). ``baseline`` is the median share of up to
  ``HISTORY_DAYS`` earlier days with traffic (the store's days before the window count too,
  so a daily run has a history); with no earlier day, the holdout's share. Boundary probing
  (HopSkipJump's bisections toward the decision boundary) asks exactly such questions.

Large days are sampled (``MAX_PER_DAY`` responses, deterministic for a seed); ``n`` counts all.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy.stats import ks_2samp

LOW_MARGIN_QUANTILE = 0.10
MAX_PER_DAY = 20_000
MAX_REFERENCE_ROWS = 20_000
MIN_RESPONSES = 30
ALPHA = 0.01
MIN_REFERENCE_GAP = 0.05
MIN_JUMP = 0.05
RELATIVE_JUMP = 0.25
HISTORY_DAYS = 7
TRAINING_LIKE = "training-like"
LOW_MARGIN_SHIFT = "low-margin shift"

CONFIDENCE_SCHEMA = {
    "day": pl.Date,
    "n": pl.Int64,
    "sampled": pl.Int64,
    "mean_confidence": pl.Float64,
    "median_margin": pl.Float64,
    "ks_train": pl.Float64,
    "p_train": pl.Float64,
    "ks_holdout": pl.Float64,
    "p_holdout": pl.Float64,
    "ks_margin_holdout": pl.Float64,
    "low_margin_share": pl.Float64,
    "baseline_share": pl.Float64,
    "low_margin_threshold": pl.Float64,
    "reference_gap": pl.Float64,
    "alert": pl.String,
    "alert_detail": pl.String,
}


def confidence_and_margin(proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a probability matrix: the largest entry and its lead over the second."""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        return np.zeros(0), np.zeros(0)
    top2 = -np.partition(-p, 1, axis=1)[:, :2]
    return top2[:, 0], top2[:, 0] - top2[:, 1]


def response_scores(probabilities: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Confidence and margin of each logged response with at least two finite probabilities
    (responses of any width; the order of the columns does not matter)."""
    values = probabilities.drop_nulls()
    if values.len() == 0:
        return np.zeros(0), np.zeros(0)
    frame = pl.DataFrame({"p": values}).filter(
        (pl.col("p").list.len() >= 2) & pl.col("p").list.eval(pl.element().is_finite()).list.all()
    )
    if frame.height == 0:
        return np.zeros(0), np.zeros(0)
    sorted_p = frame.select(pl.col("p").list.sort(descending=True))["p"]
    top1 = sorted_p.list.get(0).to_numpy().astype(np.float64)
    top2 = sorted_p.list.get(1).to_numpy().astype(np.float64)
    return top1, top1 - top2


@dataclass
class Baseline:
    """The served model's confidences on its own data: what the days are compared with."""

    train_confidence: np.ndarray | None
    holdout_confidence: np.ndarray | None
    holdout_margin: np.ndarray | None
    low_margin_threshold: float
    low_margin_share: float  # share of the reference's responses below the threshold
    reference_gap: float | None  # KS between train and holdout confidences
    reference_p: float | None
    source: str  # where the low-margin threshold came from: "holdout" or "train"

    @property
    def discriminates(self) -> bool:
        """Whether training and holdout confidences differ enough to call a day training-like."""
        return (
            self.reference_gap is not None
            and self.reference_p is not None
            and self.reference_gap >= MIN_REFERENCE_GAP
            and self.reference_p < ALPHA
        )

    def describe(self) -> dict:
        return {
            "train_rows": 0 if self.train_confidence is None else len(self.train_confidence),
            "holdout_rows": 0 if self.holdout_confidence is None else len(self.holdout_confidence),
            "low_margin_threshold": round(self.low_margin_threshold, 6),
            "low_margin_share": round(self.low_margin_share, 6),
            "reference_gap": None if self.reference_gap is None else round(self.reference_gap, 6),
            "reference_p": self.reference_p,
            "discriminates": self.discriminates,
            "source": self.source,
        }


def baseline_from_proba(
    train_proba: np.ndarray | None, holdout_proba: np.ndarray | None
) -> Baseline:
    """The baseline from the served model's probabilities on its training and holdout rows
    (either may be ``None``; the low-margin threshold comes from holdout when given)."""
    train_c, train_m = (None, None)
    hold_c, hold_m = (None, None)
    if train_proba is not None:
        train_c, train_m = confidence_and_margin(train_proba)
    if holdout_proba is not None:
        hold_c, hold_m = confidence_and_margin(holdout_proba)
    margins, source = (
        (hold_m, "holdout") if hold_m is not None and len(hold_m) else (train_m, "train")
    )
    if margins is None or not len(margins):
        raise ValueError("the baseline needs the model's probabilities on train or holdout rows")
    threshold = float(np.quantile(margins, LOW_MARGIN_QUANTILE))
    gap = p = None
    if train_c is not None and hold_c is not None and len(train_c) and len(hold_c):
        test = ks_2samp(train_c, hold_c)
        gap, p = float(test.statistic), float(test.pvalue)
    return Baseline(
        train_confidence=train_c,
        holdout_confidence=hold_c,
        holdout_margin=hold_m,
        low_margin_threshold=threshold,
        low_margin_share=float((margins < threshold).mean()),
        reference_gap=gap,
        reference_p=p,
        source=source,
    )


def _bounded(X: np.ndarray | None, rows: int, seed: int) -> np.ndarray | None:
    if X is None or len(X) <= rows:
        return X
    pick = np.random.default_rng(seed).choice(len(X), rows, replace=False)
    return X[np.sort(pick)]


def baseline_from_model(
    model,
    train_X: np.ndarray | None,
    holdout_X: np.ndarray | None,
    *,
    rows: int = MAX_REFERENCE_ROWS,
    seed: int = 0,
) -> Baseline:
    """The baseline of a served model (:class:`audits.models.ServedModel`) on at most ``rows``
    training and ``rows`` holdout rows."""
    train_X, holdout_X = _bounded(train_X, rows, seed), _bounded(holdout_X, rows, seed + 1)
    train_p = model.predict_proba(train_X) if train_X is not None else None
    holdout_p = model.predict_proba(holdout_X) if holdout_X is not None else None
    return baseline_from_proba(train_p, holdout_p)


def sample_day(n: int, rows: int, seed: int, day: dt.date) -> np.ndarray:
    """Indices of at most ``rows`` of a day's ``n`` responses, the same for a seed and day."""
    if n <= rows:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, day.toordinal()]).choice(n, rows, replace=False))


def _ks(a: np.ndarray, b: np.ndarray | None) -> tuple[float | None, float | None]:
    if b is None or not len(b) or not len(a):
        return None, None
    test = ks_2samp(a, b)
    return round(float(test.statistic), 6), float(test.pvalue)


def _low_margin_alert(share: float, baseline: float, n: int) -> bool:
    se = float(np.sqrt(max(baseline * (1 - baseline), 1e-12) / max(n, 1)))
    return share - baseline >= max(MIN_JUMP, RELATIVE_JUMP * baseline, 3 * se)


def _training_like(row: dict, baseline: Baseline) -> bool:
    if not baseline.discriminates or row["ks_train"] is None or row["ks_holdout"] is None:
        return False
    return (
        row["p_holdout"] < ALPHA
        and row["ks_train"] < row["ks_holdout"]
        and row["ks_train"] <= baseline.reference_gap / 2
    )


def daily_confidence(
    responses: pl.DataFrame,
    baseline: Baseline,
    days: Sequence[dt.date],
    *,
    totals: Mapping[dt.date, int] | None = None,
    history: Mapping[dt.date, float] | None = None,
    max_per_day: int = MAX_PER_DAY,
    seed: int = 0,
) -> pl.DataFrame:
    """One row per day of ``days`` (``CONFIDENCE_SCHEMA``): the day's confidence statistics
    against the baseline and its alerts.

    ``responses`` has ``day`` and ``probabilities`` (list) columns, already sampled or not
    (each day is cut to ``max_per_day`` here); ``totals`` gives each day's full response count
    when the caller sampled; ``history`` gives the low-margin shares of earlier days outside
    ``days`` (the low-margin baseline's history)."""
    by_day = {key[0]: part for key, part in responses.group_by("day")} if responses.height else {}
    shares: dict[dt.date, float] = dict(history or {})
    rows = []
    for day in sorted(days):
        part = by_day.get(day)
        conf, margin = response_scores(part["probabilities"]) if part is not None else ([], [])
        n = int((totals or {}).get(day, len(conf)))
        keep = sample_day(len(conf), max_per_day, seed, day)
        conf, margin = np.asarray(conf)[keep], np.asarray(margin)[keep]
        used = len(conf)
        row = dict.fromkeys(CONFIDENCE_SCHEMA)
        row.update(
            day=day,
            n=n,
            sampled=used,
            low_margin_threshold=baseline.low_margin_threshold,
            reference_gap=baseline.reference_gap,
        )
        if used < MIN_RESPONSES:
            rows.append(row)
            continue
        row["ks_train"], row["p_train"] = _ks(conf, baseline.train_confidence)
        row["ks_holdout"], row["p_holdout"] = _ks(conf, baseline.holdout_confidence)
        row["ks_margin_holdout"] = _ks(margin, baseline.holdout_margin)[0]
        share = float((margin < baseline.low_margin_threshold).mean())
        earlier = [shares[d] for d in sorted(shares) if d < day][-HISTORY_DAYS:]
        base = float(np.median(earlier)) if earlier else baseline.low_margin_share
        row.update(
            mean_confidence=round(float(conf.mean()), 6),
            median_margin=round(float(np.median(margin)), 6),
            low_margin_share=round(share, 6),
            baseline_share=round(base, 6),
        )
        alerts, details = [], []
        if _training_like(row, baseline):
            alerts.append(TRAINING_LIKE)
            details.append(
                f"confidences nearer training (KS {row['ks_train']:.3f}) than holdout "
                f"(KS {row['ks_holdout']:.3f}); train vs holdout KS {baseline.reference_gap:.3f}"
            )
        if _low_margin_alert(share, base, used):
            alerts.append(LOW_MARGIN_SHIFT)
            what = f"median of {len(earlier)} earlier day(s)" if earlier else baseline.source
            details.append(
                f"{share:.1%} of responses below margin {baseline.low_margin_threshold:.3f}, "
                f"against {base:.1%} ({what})"
            )
        row["alert"] = "; ".join(alerts) or None
        row["alert_detail"] = "; ".join(details) or None
        shares[day] = share
        rows.append(row)
    return pl.DataFrame(rows, schema=CONFIDENCE_SCHEMA)


def history_shares(responses: pl.DataFrame, baseline: Baseline, **kwargs) -> dict[dt.date, float]:
    """Low-margin shares of earlier days (the ``history`` of :func:`daily_confidence`)."""
    if responses.height == 0:
        return {}
    days = sorted(set(responses["day"].to_list()))
    table = daily_confidence(responses, baseline, days, **kwargs)
    return {
        r["day"]: r["low_margin_share"]
        for r in table.iter_rows(named=True)
        if r["low_margin_share"] is not None
    }
