"""Forensics: how much of the model a flagged user or group obtained, which keys act as one,
and what a defence would have changed.

- :mod:`.surrogates`: the surrogate set an attacker could train (shared with the simulator's
  ground truth and the privacy extraction study) and the agreement measure.
- :mod:`.damage`: :func:`estimate_damage`, fidelity with a bootstrap interval, a curve of
  fidelity against queries and the queries it took to reach 90%, within a training budget.
- :mod:`.traffic`: logged events as arrays (:func:`traffic`), probability columns, the logged
  reference.
- :mod:`.linking`: :func:`link_groups`, keys that behave as one client.
- :mod:`.defences` and :mod:`.replay`: the defences (:class:`DefenceSettings`), their cost to
  legitimate users (:func:`legit_costs`) and their replay on a subject
  (:func:`replay_defences`).
- :mod:`.pool`: subjects estimated in worker processes; :mod:`.run`: one window's forensics
  (:func:`run_forensics`), as the asset and the benchmark run it.
"""

from audits.forensics.damage import (
    BOOTSTRAP,
    CURVE_POINTS,
    TARGET,
    TRAIN_BUDGET,
    Damage,
    bootstrap_ci,
    budget_draws,
    curve_sizes,
    damage_of_traffic,
    estimate_damage,
    training_rows,
)
from audits.forensics.defences import (
    DEFAULT_DEDUP_TOLERANCE,
    DEFAULT_NOISE_SCALE,
    DEFAULT_RATE_LIMITS,
    DEFAULT_ROUND_DECIMALS,
    DefenceSettings,
    LegitCosts,
    duplicate_queries,
    legit_costs,
    randomise_probabilities,
    rate_limit_mask,
    rate_limits_of,
)
from audits.forensics.linking import feature_scale, link_groups, linked, pair_evidence
from audits.forensics.pool import SubjectTask, estimate_subjects
from audits.forensics.replay import replay_defences
from audits.forensics.run import ForensicsResult, ForensicsSettings, run_forensics
from audits.forensics.surrogates import (
    FAMILIES,
    MAX_BINS,
    agreement,
    as_labels,
    make_surrogate,
    quantile_edges,
    to_bins,
)
from audits.forensics.traffic import (
    REFERENCE_ROWS,
    Traffic,
    logged_reference,
    proba_columns,
    traffic,
)

__all__ = [
    "BOOTSTRAP",
    "CURVE_POINTS",
    "DEFAULT_DEDUP_TOLERANCE",
    "DEFAULT_NOISE_SCALE",
    "DEFAULT_RATE_LIMITS",
    "DEFAULT_ROUND_DECIMALS",
    "FAMILIES",
    "MAX_BINS",
    "REFERENCE_ROWS",
    "TARGET",
    "TRAIN_BUDGET",
    "Damage",
    "DefenceSettings",
    "ForensicsResult",
    "ForensicsSettings",
    "LegitCosts",
    "SubjectTask",
    "Traffic",
    "agreement",
    "as_labels",
    "bootstrap_ci",
    "budget_draws",
    "curve_sizes",
    "damage_of_traffic",
    "duplicate_queries",
    "estimate_damage",
    "estimate_subjects",
    "feature_scale",
    "legit_costs",
    "link_groups",
    "linked",
    "logged_reference",
    "make_surrogate",
    "pair_evidence",
    "proba_columns",
    "quantile_edges",
    "randomise_probabilities",
    "rate_limit_mask",
    "rate_limits_of",
    "replay_defences",
    "run_forensics",
    "to_bins",
    "traffic",
    "training_rows",
]
