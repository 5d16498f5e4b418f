"""From detector scores to decisions: the combined score, its threshold, Sybil groups, the
detection delay, and incidents with their evidence.

Combined score (``combine``): the directional ``extraction`` evidence (see
:class:`audits.detectors.DirectionalScorer`) times ``1 + ENSEMBLE_WEIGHT x`` the mean population
rank of the other detectors (entropy, IForest, LOF, OCSVM, AutoEncoder). The unsupervised
detectors flag whatever is rare, benign or not, so they only break ties among users that already
show extraction evidence: a user with none scores 0 however rare they are.

Threshold (``choose_threshold``): pythresh's ``IQR`` thresholder on ``log1p(score)`` (outliers of
the score distribution: above Q3 + 1.5 IQR), never below ``SCORE_FLOOR`` (the evidence of two
signal groups agreeing at about two robust standard deviations), so a window without attackers
flags no one just because some user must be the largest. No contamination rate is assumed.

Sybil groups (``candidate_groups`` / ``group_scores``): keys whose source addresses share a /24
and that are active on a common day are pooled into one pseudo-user and scored like a user
against the same population: an attack split over many keys shows the joint distribution and
coverage. Pooling amplifies, it does not invent: a group's score is capped at
``GROUP_MEMBER_FACTOR`` x its median member's own score, so colleagues behind one office /24,
whose pooled traffic is broad only because it is several people's, stay low. Every member
carries its group's id; a member's score is the larger of its own and its group's.
"""

from __future__ import annotations

import hashlib
import json
import math
from statistics import NormalDist

import numpy as np
import polars as pl

from audits.detectors import EXTRACTION_SIGNALS, DetectorSuite, reference_null
from audits.event_source import BATCH_EVENTS, EventSource, as_source, pack
from audits.features import (
    Reference,
    empty_features,
    reference_of,
    user_features,
    window_features,
)

Events = pl.DataFrame | EventSource

ENSEMBLE_WEIGHT = 0.1
RANK_DECIMALS = 9
GROUP_MEMBER_FACTOR = 2.0  # a pooled group scores at most this x its median member's score
FP_BUDGET = 0.01  # share of legitimate keys the threshold may flag
BULK_QUANTILE = 0.75  # the null's spread: from the median to this quantile of the scores
MIN_BULK_USERS = 20  # fewer keys: the nominal z of the budget is the threshold
EVIDENCE_CEILING = 5.0  # z: evidence this strong is flagged whatever the population does
FLOOD_FACTOR = 5.0  # warn when this many times the budget's share is flagged
FLOOD_MIN_SHARE = 0.05
DELAY_CHECKPOINTS = (25, 50, 100, 200, 400, 800, 1600, 3200, 6400)
SCORE_COLUMNS = ("extraction", "entropy", "iforest", "lof", "ocsvm", "autoencoder")

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

INCIDENTS_SCHEMA = {
    "incident_id": pl.String,
    "kind": pl.String,
    "subject": pl.String,
    "members": pl.List(pl.String),
    "severity": pl.String,
    "first_seen": pl.Datetime("us"),
    "last_seen": pl.Datetime("us"),
    "n_events": pl.Int64,
    "score": pl.Float64,
    "evidence": pl.String,
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
    """The combined score: directional evidence; positive evidence is tie-broken (x 1 + 0.1 x)
    by the unsupervised detectors' mean rank within ``population`` (default: the scored rows)."""
    population = population or scores
    others = [k for k in scores if k != "extraction"]
    if others:
        ens = np.mean([_population_rank(scores[k], population[k]) for k in others], axis=0)
    else:
        ens = np.zeros(len(scores["extraction"]))
    e = scores["extraction"]
    return np.where(e > 0, e * (1.0 + ENSEMBLE_WEIGHT * ens), e)


def choose_threshold(score: np.ndarray, fp_budget: float = FP_BUDGET) -> tuple[float, str]:
    """The score above which at most ``fp_budget`` of legitimate keys are expected, and how it
    was chosen (see module docstring)."""
    if not 0.0 < fp_budget < 0.5:
        raise ValueError(f"the false-positive budget must be in (0, 0.5), not {fp_budget}")
    z = NormalDist().inv_cdf(1.0 - fp_budget)
    s = np.asarray(score, dtype=np.float64)
    s = s[np.isfinite(s)]
    bulk = z
    if len(s) >= MIN_BULK_USERS:
        median, upper = np.quantile(s, [0.5, BULK_QUANTILE])
        # an exponential upper tail through the median and the BULK_QUANTILE quantile
        decay = math.log(0.5 / fp_budget) / math.log(0.5 / (1.0 - BULK_QUANTILE))
        bulk = float(median + max(upper - median, 0.0) * decay)
    t = float(np.clip(bulk, z, EVIDENCE_CEILING))
    method = (
        f"the {1 - fp_budget:.0%} quantile of an exponential-tailed null fitted to the bulk "
        f"(median and "
        f"{BULK_QUANTILE:.0%} quantile of the scores): false-positive budget {fp_budget:.2%}, "
        f"kept within [{z:.2f}, {EVIDENCE_CEILING:g}] z"
    )
    return t, method


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


# ---------------------------------------------------------------- Sybil groups


def subnet24(ip: pl.Expr) -> pl.Expr:
    """The /24 of an IPv4 address as ``a.b.c.0/24`` (null for anything else)."""
    parts = ip.str.extract(r"^(\d{1,3}\.\d{1,3}\.\d{1,3})\.\d{1,3}$", 1)
    return pl.when(parts.is_not_null()).then(parts + ".0/24").otherwise(None)


def candidate_groups(events: pl.LazyFrame | pl.DataFrame) -> pl.DataFrame:
    """``(group_id, user_id)``: keys sharing a /24 that are active on a common day (>= 2 keys).
    ``group_id`` is ``subnet:<a.b.c.0/24>``; a key in several such subnets joins each.
    ``events`` needs ``user_id``, ``day`` and ``source_ip`` (e.g. a source's ``subnet_days``)."""
    lf = events.lazy() if isinstance(events, pl.DataFrame) else events
    days = (
        lf.select("user_id", "day", subnet24(pl.col("source_ip")).alias("subnet"))
        .drop_nulls("subnet")
        .unique()
    )
    together = (
        days.group_by("subnet", "day")
        .agg(pl.col("user_id").unique().alias("keys"))
        .filter(pl.col("keys").list.len() >= 2)
    )
    pairs = together.explode("keys").select("subnet", pl.col("keys").alias("user_id")).unique()
    out = pairs.collect()
    counts = out.group_by("subnet").agg(pl.len().alias("k")).filter(pl.col("k") >= 2)
    return (
        out.join(counts.select("subnet"), on="subnet")
        .select(("subnet:" + pl.col("subnet")).alias("group_id"), "user_id")
        .sort("group_id", "user_id")
    )


def group_features(
    events: Events,
    groups: pl.DataFrame,
    reference: np.ndarray | Reference | None,
    *,
    seed: int = 0,
    max_events: int = BATCH_EVENTS,
) -> pl.DataFrame:
    """Features of each candidate group's pooled traffic (one row per group, ``user_id`` =
    the group id), a batch of groups at a time (about ``max_events`` member events)."""
    if groups.height == 0:
        return empty_features()
    source = as_source(events)
    ref = reference_of(source, reference, seed)
    counts = source.user_counts()
    sizes = groups.group_by("group_id").agg(
        pl.col("user_id").replace_strict(counts, default=0, return_dtype=pl.Int64).sum()
    )
    parts = []
    for batch in pack(dict(sizes.iter_rows()), sizes["group_id"], max_events):
        chosen = groups.filter(pl.col("group_id").is_in(batch))
        members = chosen["user_id"].unique().to_list()
        pooled = (
            source.fetch(members)
            .join(chosen, on="user_id")
            .with_columns(pl.col("group_id").alias("user_id"))
            .drop("group_id")
        )
        parts.append(user_features(pooled, ref, seed=seed))
    return pl.concat(parts).sort("user_id") if parts else empty_features()


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
    threshold, method = choose_threshold(score, fp_budget)
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
        gs = pooled.join(typical, on="group_id").select(
            "group_id",
            pl.min_horizontal(
                "pooled", GROUP_MEMBER_FACTOR * pl.col("typical").clip(lower_bound=0.0)
            ).alias("score_group"),
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


# ---------------------------------------------------------------- incidents


def _evidence(row: dict, features: pl.DataFrame, top: int = 5) -> list[dict]:
    """The features of ``row`` that stand out in the extraction direction: value and
    percentile in the population of users."""
    items = []
    for signals in EXTRACTION_SIGNALS.values():
        for col, direction in signals:
            value = row.get(col)
            if value is None or not math.isfinite(value):
                continue
            pop = features[col].drop_nulls().drop_nans().to_numpy()
            if len(pop) == 0:
                continue
            pct = float((pop < value).mean() + 0.5 * (pop == value).mean()) * 100.0
            strength = pct if direction > 0 else 100.0 - pct
            items.append(
                (
                    strength,
                    {
                        "feature": col,
                        "value": round(float(value), 6),
                        "population_percentile": round(pct, 2),
                    },
                )
            )
    items.sort(key=lambda t: -t[0])
    return [e for _, e in items[:top]]


def incident_id(kind: str, subject: str, members: list[str], first_day: str) -> str:
    """Stable across reruns: a hash of the kind, the subject (or sorted members) and the
    first day seen."""
    key = "|".join([kind, subject, ",".join(sorted(members)), first_day])
    return "inc_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def severity(score: float, threshold: float) -> str:
    ratio = score / threshold if threshold > 0 else math.inf
    return "critical" if ratio >= 3 else "high" if ratio >= 1.5 else "medium"


def build_incidents(
    events: Events,
    features: pl.DataFrame,
    scores: pl.DataFrame,
    summary: dict,
) -> pl.DataFrame:
    """One incident per flagged group (its members' traffic pooled) and one per flagged user
    not covered by a flagged group."""
    threshold = summary["threshold"]
    span = as_source(events).spans()
    span_d = {r["user_id"]: r for r in span.iter_rows(named=True)}
    rows = []
    groups: pl.DataFrame = summary.get("groups")
    covered: set[str] = set()
    gfeats = summary.get("group_features")
    if groups is not None and groups.height:
        for g in groups.filter(pl.col("flagged")).iter_rows(named=True):
            members = list(g["members"])
            covered.update(members)
            spans = [span_d[m] for m in members if m in span_d]
            first = min(s["first_seen"] for s in spans)
            grow = {}
            if gfeats is not None:
                hit = gfeats.filter(pl.col("user_id") == g["group_id"])
                grow = hit.row(0, named=True) if hit.height else {}
            rows.append(
                {
                    "incident_id": incident_id("group", g["group_id"], members, str(first.date())),
                    "kind": "group",
                    "subject": g["group_id"],
                    "members": members,
                    "severity": severity(g["score"], threshold),
                    "first_seen": first,
                    "last_seen": max(s["last_seen"] for s in spans),
                    "n_events": int(sum(s["n_events"] for s in spans)),
                    "score": float(g["score"]),
                    "evidence": json.dumps(_evidence(grow, features)),
                }
            )
    feat_rows = {r["user_id"]: r for r in features.iter_rows(named=True)}
    for u in scores.filter(pl.col("flagged")).iter_rows(named=True):
        uid = u["user_id"]
        if uid in covered or uid not in span_d:
            continue
        s = span_d[uid]
        rows.append(
            {
                "incident_id": incident_id("user", uid, [uid], str(s["first_seen"].date())),
                "kind": "user",
                "subject": uid,
                "members": [uid],
                "severity": severity(u["score"], threshold),
                "first_seen": s["first_seen"],
                "last_seen": s["last_seen"],
                "n_events": int(s["n_events"]),
                "score": float(u["score"]),
                "evidence": json.dumps(_evidence(feat_rows.get(uid, {}), features)),
            }
        )
    return pl.DataFrame(rows, schema=INCIDENTS_SCHEMA).sort("score", descending=True)
