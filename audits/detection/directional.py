"""The directional, sample-size-aware evidence of extraction (:class:`DirectionalScorer`)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from audits.detection.nulls import (
    _SHARES,
    BROAD_SHARE,
    Z_CLIP,
    ReferenceNull,
    SampleSizeNull,
    _mad,
    effective_n,
    sample_sizes,
)

# (feature, direction): +1 = higher is more extraction-like, -1 = lower is
EXTRACTION_SIGNALS: dict[str, tuple[tuple[str, int], ...]] = {
    # far from the legitimate data: uniform probing, knockoff pools, Sybil / low-and-slow
    "off_distribution": (
        ("ref_nn_dist", +1),
        ("manifold_residual", +1),
        ("ref_mean_shift", +1),
        ("out_of_range_share", +1),
    ),
    # broad coverage of the input space and of the classes
    "coverage": (
        ("cell_entropy", +1),
        ("coverage", +1),
        ("q_std_ratio", +1),
        ("class_entropy", +1),
    ),
    # marching in small steps: JBDA, HopSkipJump (PRADA's signal)
    "small_steps": (("near_dup_rate", +1), ("prada_w", -1), ("step_ratio", -1)),
    # hugging the decision boundary: ActiveThief, HopSkipJump
    "boundary": (("low_margin_share", +1), ("conf_p10", -1)),
}


AGREEMENT = 3.0  # z: how far one signal may count above the one that agrees with it


def agreement(strongest: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Stouffer's sum of two signals' z, the stronger counted at most ``AGREEMENT`` above the
    other: one benign oddity (a slice far from the reference, a user on a class boundary) is
    not enough on its own, two agreeing signals are."""
    return (np.minimum(strongest, second + AGREEMENT) + np.minimum(second, strongest)) / math.sqrt(
        2.0
    )


class DirectionalScorer:
    """The directional, sample-size-aware evidence of extraction, in z units.

    * Signal groups (``EXTRACTION_SIGNALS``): each feature becomes a signed z in the
      extraction direction against :class:`SampleSizeNull` (the population's users of similar
      volume); a group's z is the mean of its features'; the evidence ``E`` is the
      :func:`agreement` of the two strongest groups (one benign oddity alone is not enough).
    * Reference evidence ``R`` (with a :class:`ReferenceNull`): how far the user's queries sit
      from the reference data, against what n reference rows show: absolute, it cannot be
      diluted by many keys doing the same (in :func:`agreement` with the strongest other group
      or the volume).
    * Volume ``V``: a robust z of log(distinct queries) against the population: volume is
      evidence in itself.

    The score is Stouffer's sum of the three views, ``(E + R + V) / sqrt(3)`` (``(E + V) /
    sqrt(2)`` without reference data): a heavy backend that is broad and busy but sits on the
    owner's data no longer scores like a broad, busy key off it. When positive, benign
    explanations discount it: queries re-sent from earlier days, one-feature sweeps.
    """

    def __init__(self, reference: ReferenceNull | None = None) -> None:
        self.reference = reference

    def fit(self, features: pl.DataFrame) -> DirectionalScorer:
        sizes = sample_sizes(features)
        self.nulls_: dict[str, SampleSizeNull] = {}
        for signals in EXTRACTION_SIGNALS.values():
            for c, _ in signals:
                x = features[c].cast(pl.Float64).to_numpy()
                self.nulls_[c] = SampleSizeNull().fit(x, effective_n(c, sizes), c in _SHARES)
        v = np.log(sizes["distinct"])
        self.volume_loc_ = float(np.median(v)) if len(v) else 0.0
        spread = _mad(v, self.volume_loc_)
        self.volume_scale_ = spread if spread > 1e-9 else 1.0
        return self

    def components(self, features: pl.DataFrame) -> dict[str, np.ndarray]:
        """Each signal group's z, ``evidence``, ``reference``, ``volume`` and the discounts."""
        sizes = sample_sizes(features)
        out = {}
        for name, signals in EXTRACTION_SIGNALS.items():
            zs = [
                self.nulls_[c].z(features[c].cast(pl.Float64).to_numpy(), effective_n(c, sizes), d)
                for c, d in signals
            ]
            out[name] = np.mean(zs, axis=0)
        groups = np.sort(np.vstack([out[g] for g in EXTRACTION_SIGNALS]), axis=0)
        out["evidence"] = agreement(groups[-1], groups[-2])
        v = (np.log(sizes["distinct"]) - self.volume_loc_) / self.volume_scale_
        out["volume"] = np.clip(v, *Z_CLIP)
        # far from the owner's data, and as broad as the data itself (absolute, for flooding),
        # or broad, stepping or on the boundary for the population, or many queries
        partner = [out[g] for g in EXTRACTION_SIGNALS if g != "off_distribution"]
        partner = np.max([*partner, out["volume"]], axis=0)
        broad = self._breadth(features, sizes) >= BROAD_SHARE
        out["reference"] = agreement(
            self._reference(features, sizes), np.where(broad, np.inf, partner)
        )
        repeat = features["cross_day_repeat_share"].fill_null(0.0).to_numpy()
        one_feature = features["one_feature_changed_rate"].fill_null(0.0).to_numpy()
        # cross-day repeats are a benign habit (re-scoring), squared: a share r re-sent from
        # earlier days means both fewer new queries and a key whose habit is re-sending.
        # Repeats within a day are not discounted: the evidence and the volume rest on distinct
        # queries already, and small-step chains on integer or count columns round onto the
        # same query (JBDA, HopSkipJump on digits and text repeat over 80% of their queries)
        out["novelty"] = np.clip(1.0 - repeat, 0.0, 1.0) ** 2
        out["sweep_discount"] = np.clip(1.0 - one_feature, 0.0, 1.0)
        return out

    def _reference(self, features: pl.DataFrame, sizes: dict[str, np.ndarray]) -> np.ndarray:
        if self.reference is None:
            return np.full(features.height, -np.inf)
        zs = [
            self.reference.z(
                c,
                features[c].cast(pl.Float64).to_numpy(),
                effective_n(c, sizes),
                math.sqrt(self.nulls_[c].a),
            )
            for c in ("ref_nn_dist", "manifold_residual")
        ]
        return np.max(zs, axis=0)

    def _breadth(self, features: pl.DataFrame, sizes: dict[str, np.ndarray]) -> np.ndarray:
        if self.reference is None:
            return np.full(features.height, np.nan)
        x = features["cell_entropy"].cast(pl.Float64).to_numpy()
        return self.reference.breadth(x, effective_n("cell_entropy", sizes))

    def decision_function(self, features: pl.DataFrame) -> np.ndarray:
        c = self.components(features)
        if self.reference is None:
            s = (c["evidence"] + c["volume"]) / math.sqrt(2.0)
        else:
            s = (c["evidence"] + c["reference"] + c["volume"]) / math.sqrt(3.0)
        discount = c["novelty"] * c["sweep_discount"]
        return np.where(s > 0, s * discount, s)

    def score(self, features: pl.DataFrame) -> np.ndarray:
        """The same as :meth:`decision_function`."""
        return self.decision_function(features)
