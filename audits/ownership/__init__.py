"""Ownership check: fingerprint the served model, then test whether a suspect model copies it.

The fingerprint follows conferrable adversarial examples (Lukas et al., ICLR 2021) and IPGuard
(Cao et al., 2021): inputs on which copies of the served model agree with it while models
trained independently on the same task do not.

1. Candidates come from six sampled regions: reference rows, interpolations between reference
   rows, points just beside the served model's decision boundary (bisection between rows of
   different predicted classes), uniform noise over the feature ranges, reference rows with
   Gaussian noise, and a widened Gaussian fitted to the reference rows; and a seventh,
   ``optimised``: per query strategy, starts moved by gradient ascent on the conferrability of
   small torch ensembles (surrogates on the served labels, references on the ground truth of
   the selection half; ``optimise``).
2. Selection: surrogates trained on the served model's answers (what extraction attackers
   do: natural, uniform, perturbed, widened, boundary and jittered queries; logistic
   regression, gradient boosting, MLP) and independent models trained on the ground-truth
   labels of one half of the ``--train`` rows (the null's six families, ``selection_seeds``
   each). A candidate's conferrability for one query strategy is the share of that strategy's
   surrogates that agree with the served label (averaged over their families) minus the
   highest share of any one family of independent models: a point the served model's own
   architecture reproduces when trained independently is not conferrable. The fingerprint
   has one stratum per strategy, its ``n / 6`` most conferrable candidates (none twice):
   averaged over all surrogates, off-distribution points won, where copies trained on
   natural queries behave like independent models.
3. Null: ``NULL_GROUPS`` groups of ``K`` independent models per family (six families), each
   group trained on its own disjoint share of the other half of the rows. Sharing no row with
   the selection models, they are not biased low by the selection: candidates are chosen
   where the selection models happen to disagree with the served model, and models trained on
   the same rows share those disagreements. Held-out surrogates give the agreement a copy
   reaches; with one null group's agreement they give each point a signed log-likelihood-ratio
   weight, and each weight set scores the null models of the other group (``statistic``).

Verification sums the weights of the points where the suspect gives the served label and
compares the sum with the null models of the suspect's family, since agreement on the
fingerprint depends on the model family as much as on copying: the family of its own
architecture when the file shows one (a scikit-learn estimator, an ONNX linear classifier or
dense network), else the most conservative family (the largest p-value: matching by
behaviour on the probe set let independent RBF SVMs pass as copies). Its expected score
comes from a regression of the null's scores on their agreement with the served model on a
probe set of unselected candidates (an intercept per family, one slope: a more faithful
independent model scores more too); the z-score over the pooled residual spread, averaged
over the weight sets, gives a Student-t p-value. The verdict is "copy" when it is below
``alpha`` (or the suspect file is byte-identical to the fingerprinted model), else "not
shown": the check cannot prove independence. Everything is written as JSON: no pickle.

The package: ``candidates`` (inputs), ``fingerprint`` (selection and null), ``file`` (JSON),
``verify`` (the test), ``statistic`` (its score), ``models`` (the zoo), ``optimise``
(gradient ascent). Files are written by ``reports.ownership``.
"""

from __future__ import annotations

from audits.forensics import as_labels
from audits.ownership.candidates import (
    MIN_MARGIN,
    QUERY_SOURCES,
    REGIONS,
    boundary_points,
    candidate_pool,
    query_sets,
    served_margin,
    widened,
)
from audits.ownership.file import (
    FORMAT,
    VERSION,
    fingerprint_text,
    load_fingerprint,
)
from audits.ownership.fingerprint import (
    CANDIDATES_PER_REGION,
    DEFAULT_POINTS,
    INDEPENDENT_ROWS,
    NULL_FAMILIES,
    NULL_GROUPS,
    NULL_SEEDS,
    OPTIMISED_PER_SOURCE,
    PROBE_POINTS,
    SELECTION_FAMILIES,
    SELECTION_SEEDS,
    SURROGATE_QUERIES,
    conferrability,
    make_fingerprint,
    rows_per_model,
    select_strata,
    split_halves,
)
from audits.ownership.models import (
    ARCHITECTURES,
    architecture,
    fit_quietly,
    make_model,
    train_copy,
)
from audits.ownership.verify import (
    ALL,
    DEFAULT_ALPHA,
    adjusted_stratified_p,
    adjusted_upper_p,
    pooled_t_upper_p,
    stratified_p,
    t_upper_p,
    verify,
)

__all__ = [
    "ALL",
    "ARCHITECTURES",
    "CANDIDATES_PER_REGION",
    "DEFAULT_ALPHA",
    "DEFAULT_POINTS",
    "FORMAT",
    "INDEPENDENT_ROWS",
    "MIN_MARGIN",
    "NULL_FAMILIES",
    "NULL_GROUPS",
    "NULL_SEEDS",
    "OPTIMISED_PER_SOURCE",
    "PROBE_POINTS",
    "QUERY_SOURCES",
    "REGIONS",
    "SELECTION_FAMILIES",
    "SELECTION_SEEDS",
    "SURROGATE_QUERIES",
    "VERSION",
    "adjusted_stratified_p",
    "adjusted_upper_p",
    "architecture",
    "as_labels",
    "boundary_points",
    "candidate_pool",
    "conferrability",
    "fingerprint_text",
    "fit_quietly",
    "load_fingerprint",
    "make_fingerprint",
    "make_model",
    "pooled_t_upper_p",
    "query_sets",
    "rows_per_model",
    "select_strata",
    "served_margin",
    "split_halves",
    "stratified_p",
    "t_upper_p",
    "train_copy",
    "verify",
    "widened",
]
