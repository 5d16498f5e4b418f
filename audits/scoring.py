"""From detector scores to decisions: the combined score, its threshold, Sybil groups, the
detection delay, and incidents with their evidence.

Combined score (``combine``): the evidence detectors' score (role ``EVIDENCE`` in
:data:`audits.detectors.REGISTRY`: the directional ``extraction`` evidence) times
``1 + ENSEMBLE_WEIGHT x`` the mean population rank of the tie-break detectors (entropy, IForest,
LOF, OCSVM, AutoEncoder). The unsupervised detectors flag whatever is rare, benign or not, so they
only break ties among users that already show extraction evidence: a user with none scores 0
however rare they are.

Threshold (:class:`audits.detection.threshold.BudgetThreshold`): calibrated to a false-positive
budget from the bulk of the scores (a robust null), with its value and method in the summary.

Sybil groups (``candidate_groups`` / ``group_scores``): keys whose source addresses share a /24
and that are active on a common day are pooled into one pseudo-user and scored like a user
against the same population: an attack split over many keys shows the joint distribution and
coverage. Pooling amplifies, it does not invent: a group's score is capped at
``GROUP_MEMBER_FACTOR`` x its median member's own score, so colleagues behind one office /24,
whose pooled traffic is broad only because it is several people's, stay low. Every member
carries its group's id; a member's score is the larger of its own and its group's.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import polars as pl

from audits.detection.groups import (  # noqa: F401  (re-exported)
    candidate_groups,
    group_features,
    member_pool_z,
    subnet24,
)
from audits.detection.incidents import (  # noqa: F401  (re-exported)
    INCIDENTS_SCHEMA,
    build_incidents,
    incident_id,
    severity,
)
from audits.detection.threshold import (  # noqa: F401  (re-exported)
    FP_BUDGET,
    BudgetThreshold,
    choose_threshold,
    flagged_share_warning,
)
from audits.detectors import DETECTOR_NAMES, EVIDENCE_DETECTORS, DetectorSuite, reference_null
from audits.event_source import BATCH_EVENTS, EventSource, as_source
from audits.features import Reference, reference_of, user_features, window_features

Events = pl.DataFrame | EventSource

ENSEMBLE_WEIGHT = 0.1
RANK_DECIMALS = 9
GROUP_MEMBER_FACTOR = 2.0  # a pooled group scores at most this x its median member's score
MEMBER_POOL = True  # also judge a group by its members' own evidence pooled (member_pool_z)
DELAY_CHECKPOINTS = (25, 50, 100, 200, 400, 800, 1600, 3200, 6400)
SCORE_COLUMNS = DETECTOR_NAMES  # one score_<name> column per registered detector

USER_SCORES_SCHEMA = {
    "user_id": pl.String,
    "score": pl.Float64,
    "flagged": pl.Boolean,
    "n_events": pl.Int64,
    **{f"score_{name}": pl.Float64 for name in SCORE_COLUMNS},
    "score_group": pl.Float64,
    "group_id": pl.String,
    "est_fidelity": pl.Float64,
    "first_cross_n": pl.Int64,
}


# ---------------------------------------------------------------- combine and threshold


def _population_rank(values: np.ndarray, population: np.ndarray) -> np.ndarray:
    """Share of the population at or below each value. Scores are compared at 9 decimals, so
    tied users stay tied whatever order floating-point sums ran in (the same events read from
    another log format, or in another order, rank the same)."""
    pop = np.sort(np.round(population[np.isfinite(population)], RANK_DECIMALS))
    if len(pop) == 0:
        return np.zeros(len(values))
    at = np.round(np.nan_to_num(values, nan=-np.inf), RANK_DECIMALS)
    return np.searchsorted(pop, at, side="right") / len(pop)


def combine(
    scores: dict[str, np.ndarray], population: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """The combined score: the evidence detectors' score; positive evidence is tie-broken
    (x 1 + 0.1 x) by the tie-break detectors' mean rank within ``population`` (default: the
    scored rows)."""
    population = population or scores
    evidence = [k for k in scores if k in EVIDENCE_DETECTORS]
    others = [k for k in scores if k not in EVIDENCE_DETECTORS]
    if others:
        ens = np.mean([_population_rank(scores[k], population[k]) for k in others], axis=0)
    else:
        ens = np.zeros(len(scores["extraction"]))
    e = np.max([scores[k] for k in evidence], axis=0)
    return np.where(e > 0, e * (1.0 + ENSEMBLE_WEIGHT * ens), e)


# ---------------------------------------------------------------- detection delay


def _prefixes(ev: pl.DataFrame) -> pl.DataFrame:
    """Each user's first n events for every checkpoint n below their total, and all of them,
    as pseudo-users ``<user>@<n>`` (``ev`` sorted by user, time and event id)."""
    ev = ev.with_columns(pl.int_range(1, pl.len() + 1).over("user_id").alias("_k"))
    totals = dict(ev.group_by("user_id").agg(pl.len()).iter_rows())
    total = pl.col("user_id").replace_strict(totals, default=0, return_dtype=pl.Int64)
    parts = [
        ev.filter((pl.col("_k") <= n) & (total > n)).with_columns(
            (pl.col("user_id") + f"@{n}").alias("user_id")
        )
        for n in DELAY_CHECKPOINTS
    ]
    parts.append(
        ev.with_columns((pl.col("user_id") + "@" + total.cast(pl.String)).alias("user_id"))
    )
    return pl.concat([p for p in parts if p.height]).drop("_k")


def detection_delay(
    events: Events,
    users: list[str],
    suite: DetectorSuite,
    population: dict[str, np.ndarray],
    threshold: float,
    reference: np.ndarray | Reference | None,
    *,
    seed: int = 0,
    max_events: int = BATCH_EVENTS,
) -> dict[str, int]:
    """For each of ``users``: the number of queries after which their running combined score
    (features of their first n queries, scored against the window's fitted detectors) first
    reaches ``threshold``, checked at ``DELAY_CHECKPOINTS`` and at their last query."""
    if not users:
        return {}
    source = as_source(events)
    ref = reference_of(source, reference, seed)
    pf = pl.concat(
        [
            user_features(_prefixes(batch), ref, seed=seed)
            for batch in source.batches(users, max_events=max_events)
        ]
    )
    s = combine(suite.score(pf), population)
    found: dict[str, int] = {}
    rows = sorted(
        (
            (uid.rsplit("@", 1)[0], int(uid.rsplit("@", 1)[1]), float(v))
            for uid, v in zip(pf["user_id"].to_list(), s, strict=True)
        ),
        key=lambda r: (r[0], r[1]),
    )
    for user, n, v in rows:
        if user not in found and v >= threshold:
            found[user] = n
    return found


# ---------------------------------------------------------------- scoring users


def score_users(
    features: pl.DataFrame,
    *,
    seed: int = 0,
    group_feats: pl.DataFrame | None = None,
    groups: pl.DataFrame | None = None,
    reference: Reference | None = None,
    fp_budget: float = FP_BUDGET,
) -> tuple[pl.DataFrame, dict]:
    """``user_scores`` rows (``USER_SCORES_SCHEMA``) and a summary: the threshold, how it was
    chosen, the false-positive budget, the flagged share and any warning about it, the fitted
    suite and population scores (for running scores), the group table. ``reference`` (the
    prepared reference data) adds the reference-calibrated evidence."""
    null = reference_null(reference, seed) if reference is not None else None
    suite = DetectorSuite(seed=seed, reference=null).fit(features)
    raw = suite.score(features)
    score = combine(raw)
    thresholder = BudgetThreshold(fp_budget).fit(score)
    threshold, method = thresholder.threshold_, thresholder.method_
    out = features.select("user_id", pl.col("n_events").cast(pl.Int64)).with_columns(
        pl.Series("score", score, dtype=pl.Float64),
        *[pl.Series(f"score_{k}", raw[k], dtype=pl.Float64) for k in SCORE_COLUMNS],
    )
    group_table = pl.DataFrame(
        schema={
            "group_id": pl.String,
            "score": pl.Float64,
            "flagged": pl.Boolean,
            "members": pl.List(pl.String),
        }
    )
    if group_feats is not None and groups is not None and group_feats.height:
        pooled = pl.DataFrame(
            {"group_id": group_feats["user_id"], "pooled": combine(suite.score(group_feats), raw)}
        )
        own = pl.DataFrame({"user_id": features["user_id"], "own": score})
        typical = (
            groups.join(own, on="user_id")
            .group_by("group_id")
            .agg(pl.col("own").median().alias("typical"))
        )
        # the members' own evidence pooled, on the score's scale: at the budget's nominal z it
        # reaches the threshold
        nominal = NormalDist().inv_cdf(1.0 - fp_budget)
        pool = member_pool_z(groups, own, score).select(
            "group_id", (pl.col("pool_z") * (threshold / nominal)).alias("member_pool")
        )
        if not MEMBER_POOL:
            pool = pool.with_columns(pl.lit(-math.inf).alias("member_pool"))
        gs = (
            pooled.join(typical, on="group_id")
            .join(pool, on="group_id", how="left")
            .select(
                "group_id",
                pl.max_horizontal(
                    pl.min_horizontal(
                        "pooled", GROUP_MEMBER_FACTOR * pl.col("typical").clip(lower_bound=0.0)
                    ),
                    pl.col("member_pool").fill_null(-math.inf),
                ).alias("score_group"),
            )
        )
        member_of = (
            groups.join(gs, on="group_id")
            .sort("score_group", descending=True)
            .unique("user_id", keep="first")
        )
        out = out.join(member_of, on="user_id", how="left")
        group_table = (
            groups.group_by("group_id")
            .agg(pl.col("user_id").sort().alias("members"))
            .join(gs.rename({"score_group": "score"}), on="group_id")
            .with_columns((pl.col("score") >= threshold).alias("flagged"))
            .sort("group_id")
        )
    else:
        out = out.with_columns(
            pl.lit(None, pl.String).alias("group_id"), pl.lit(None, pl.Float64).alias("score_group")
        )
    out = out.with_columns(
        pl.max_horizontal("score", pl.col("score_group").fill_null(-math.inf)).alias("score"),
    ).with_columns(
        (pl.col("score") >= threshold).alias("flagged"),
        pl.lit(None, pl.Float64).alias("est_fidelity"),
        pl.lit(None, pl.Int64).alias("first_cross_n"),
    )
    out = out.select([pl.col(c).cast(t) for c, t in USER_SCORES_SCHEMA.items()]).sort("user_id")
    final = out["score"].to_numpy()
    summary = {
        "threshold": threshold,
        "threshold_method": method,
        "fp_budget": fp_budget,
        "flagged_share": float(np.mean(final >= threshold)) if len(final) else 0.0,
        "warning": flagged_share_warning(final, threshold, fp_budget),
        "suite": suite,
        "population": raw,
        "groups": group_table,
    }
    return out, summary


def audit_scores(
    events: Events,
    reference: np.ndarray | Reference | None = None,
    *,
    seed: int = 0,
    delay: bool = True,
    features: pl.DataFrame | None = None,
    max_events: int = BATCH_EVENTS,
    fp_budget: float = FP_BUDGET,
) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """The whole detection stage over one window's events (a frame or an
    :class:`audits.event_source.EventSource`, read a batch of whole users at a time):
    ``(features, user_scores, summary)`` with Sybil groups scored and (when ``delay``)
    ``first_cross_n`` for flagged users."""
    source = as_source(events)
    # prepared once for features, group features and the delay (none to prepare without users)
    reference = reference_of(source, reference, seed) if source.user_counts() else None
    feats = (
        features
        if features is not None
        else window_features(source, reference, seed=seed, max_events=max_events)
    )
    groups = candidate_groups(source.subnet_days())
    gfeats = group_features(source, groups, reference, seed=seed, max_events=max_events)
    scores, summary = score_users(
        feats,
        seed=seed,
        group_feats=gfeats,
        groups=groups,
        reference=reference,
        fp_budget=fp_budget,
    )
    if delay:
        flagged = scores.filter(pl.col("flagged"))["user_id"].to_list()
        found = detection_delay(
            source,
            flagged,
            summary["suite"],
            summary["population"],
            summary["threshold"],
            reference,
            seed=seed,
            max_events=max_events,
        )
        scores = scores.with_columns(
            pl.col("user_id")
            .replace_strict(found, default=None, return_dtype=pl.Int64)
            .alias("first_cross_n")
        )
    summary["features"] = feats
    summary["group_features"] = gfeats
    return feats, scores, summary
