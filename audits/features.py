"""Per-user behavioural features over the events table (Polars + NumPy; no orchestration).

Every feature is computed per user over the audited window, from per-event, per-session and
per-user-day building blocks:

* volume and timing: counts, rate, inter-arrival mean / CV / burstiness, active hours, sessions
  (``session_id`` when logged, else a 30-minute inactivity gap) and their lengths, regularity;
* query statistics: mean, spread, range, quantiles, skewness, kurtosis, normality of the user's
  queries in units of the reference distribution;
* geometry: PRADA-style minimum distance of each query to the user's earlier (distinct) queries,
  their Shapiro-Wilk W, the near-duplicate rate and the one-feature-changed rate;
* distribution: distance of the queries from the reference data (``--reference`` when given,
  else a sample of the archive's own population), off-manifold residual, share outside the
  observed ranges, coverage of the input space;
* responses: entropy and balance of the predicted classes, share of low-margin answers,
  confidence distribution;
* repetition: share of queries the user already sent on an earlier day (a benign habit), and
  exact repeats within a day.

Cost bounds (documented, deterministic): the geometric features look at no more than
``PRADA_TARGETS`` distinct queries per user (evenly spaced in time) against at most
``PRADA_HISTORY`` earlier distinct queries (the most recent ones), so a user costs
O(PRADA_TARGETS x PRADA_HISTORY x d) whatever their volume; distribution features use at most
``DIST_SAMPLE`` queries per user against a reference sample of at most ``REFERENCE_ROWS`` rows.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from audits.detection.geometry import (  # noqa: F401  (re-exported: the features' bounds)
    COVERAGE_CELLS,
    COVERAGE_SAMPLE,
    DIST_SAMPLE,
    GEOMETRY_COLUMNS,
    MANIFOLD_VARIANCE,
    NEAR_DUP_RATIO,
    PRADA_HISTORY,
    PRADA_TARGETS,
    REFERENCE_ROWS,
    Reference,
    entropy,
    geometry_features,
)
from audits.event_source import BATCH_EVENTS, as_source

SESSION_GAP_S = 30 * 60
LOW_MARGIN = 0.2  # top-1 minus top-2 probability below which an answer is low-margin

FEATURE_COLUMNS: tuple[str, ...] = (
    # volume and timing
    "n_events",
    "n_days",
    "events_per_day",
    "max_day_events",
    "rate_per_hour",
    "gap_mean_s",
    "gap_cv",
    "burstiness",
    "active_hours",
    "hour_entropy",
    "n_sessions",
    "session_len_mean",
    "session_len_max",
    "session_dur_mean_s",
    "regularity",
    *GEOMETRY_COLUMNS,
    # responses
    "class_entropy",
    "class_balance",
    "low_margin_share",
    "conf_mean",
    "conf_std",
    "conf_p10",
    # repetition
    "cross_day_repeat_share",
    "within_day_repeat_share",
    "unique_share",
)


# ---------------------------------------------------------------- Polars building blocks


def with_sessions(events: pl.LazyFrame, gap_s: int = SESSION_GAP_S) -> pl.LazyFrame:
    """Add ``session_key``: the logged ``session_id`` when present, else a new session after
    ``gap_s`` seconds of inactivity; and ``gap_s`` (seconds since the user's previous event)."""
    ordered = events.sort("user_id", "ts", "event_id")
    gap = (pl.col("ts") - pl.col("ts").shift(1).over("user_id")).dt.total_milliseconds() / 1000.0
    ordered = ordered.with_columns(gap.alias("gap_s"))
    inferred = (
        (pl.col("gap_s").is_null() | (pl.col("gap_s") > gap_s))
        .cast(pl.Int64)
        .cum_sum()
        .over("user_id")
    )
    return ordered.with_columns(
        pl.coalesce(pl.col("session_id"), pl.lit("gap-") + inferred.cast(pl.String)).alias(
            "session_key"
        )
    )


def session_features(events: pl.LazyFrame) -> pl.LazyFrame:
    """One row per (user, session): length, duration, and the regularity of its gaps."""
    s = with_sessions(events)
    in_session_gap = pl.when(
        pl.col("session_key") == pl.col("session_key").shift(1).over("user_id")
    )
    s = s.with_columns(in_session_gap.then(pl.col("gap_s")).otherwise(None).alias("sgap"))
    return s.group_by("user_id", "session_key").agg(
        pl.len().alias("session_len"),
        ((pl.col("ts").max() - pl.col("ts").min()).dt.total_milliseconds() / 1000.0).alias(
            "session_dur_s"
        ),
        (pl.col("sgap").std() / pl.col("sgap").mean()).alias("session_gap_cv"),
    )


def user_day_features(events: pl.LazyFrame) -> pl.LazyFrame:
    """One row per (user, day): volume and active hours."""
    return events.group_by("user_id", "day").agg(
        pl.len().alias("day_events"),
        pl.col("ts").dt.hour().n_unique().alias("day_active_hours"),
    )


def timing_features(events: pl.LazyFrame) -> pl.LazyFrame:
    """Per-user volume, timing and session features, rolled up from days and sessions."""
    s = with_sessions(events)
    per_user = s.group_by("user_id").agg(
        pl.len().alias("n_events"),
        pl.col("day").n_unique().alias("n_days"),
        ((pl.col("ts").max() - pl.col("ts").min()).dt.total_milliseconds() / 3.6e6).alias("span_h"),
        pl.col("gap_s").mean().alias("gap_mean_s"),
        pl.col("gap_s").std().alias("gap_std_s"),
        pl.col("ts").dt.hour().value_counts().alias("_hours"),
    )
    days = (
        user_day_features(events)
        .group_by("user_id")
        .agg(
            pl.col("day_events").max().alias("max_day_events"),
            pl.col("day_active_hours").sum().alias("active_hours"),
        )
    )
    sessions = (
        session_features(events)
        .group_by("user_id")
        .agg(
            pl.len().alias("n_sessions"),
            pl.col("session_len").mean().alias("session_len_mean"),
            pl.col("session_len").max().alias("session_len_max"),
            pl.col("session_dur_s").mean().alias("session_dur_mean_s"),
            pl.col("session_gap_cv").median().alias("_session_gap_cv"),
        )
    )
    out = per_user.join(days, on="user_id", how="left").join(sessions, on="user_id", how="left")
    cv = pl.col("gap_std_s") / pl.col("gap_mean_s")
    return out.with_columns(
        (pl.col("n_events") / pl.col("n_days")).alias("events_per_day"),
        (pl.col("n_events") / pl.max_horizontal(pl.col("active_hours"), pl.lit(1))).alias(
            "rate_per_hour"
        ),
        cv.fill_null(0.0).fill_nan(0.0).alias("gap_cv"),
        (
            (pl.col("gap_std_s") - pl.col("gap_mean_s"))
            / (pl.col("gap_std_s") + pl.col("gap_mean_s"))
        )
        .fill_null(0.0)
        .fill_nan(0.0)
        .alias("burstiness"),
        # regularity: 1 for perfectly even gaps inside sessions, towards 0 for human-like ones
        (1.0 / (1.0 + pl.col("_session_gap_cv").fill_null(1.0).fill_nan(1.0))).alias("regularity"),
        pl.col("_hours").map_elements(_hour_entropy, return_dtype=pl.Float64).alias("hour_entropy"),
    ).drop("_hours", "_session_gap_cv", "gap_std_s", "span_h")


def _hour_entropy(counts) -> float:
    c = np.array([v["count"] for v in counts], dtype=np.float64)
    p = c / c.sum()
    return float(-(p * np.log(p)).sum() / math.log(24))


def repetition_features(events: pl.LazyFrame) -> pl.LazyFrame:
    """Share of a user's queries already sent on an earlier day / earlier the same day."""
    h = events.select("user_id", "day", pl.col("features").hash().alias("qh"))
    first_day = h.group_by("user_id", "qh").agg(pl.col("day").min().alias("first_day"))
    per_day = h.group_by("user_id", "day", "qh").agg(pl.len().alias("k"))
    j = per_day.join(first_day, on=["user_id", "qh"])
    return j.group_by("user_id").agg(
        (
            pl.when(pl.col("day") > pl.col("first_day")).then(pl.col("k")).otherwise(0).sum()
            / pl.col("k").sum()
        ).alias("cross_day_repeat_share"),
        ((pl.col("k") - 1).sum() / pl.col("k").sum()).alias("within_day_repeat_share"),
        (pl.col("qh").n_unique() / pl.col("k").sum()).alias("unique_share"),
    )


def response_features(events: pl.LazyFrame) -> pl.LazyFrame:
    """Predicted-class entropy and balance, low-margin share and confidence distribution."""
    probs = pl.col("probabilities")
    top = probs.list.sort(descending=True)
    ev = events.with_columns(
        top.list.get(0, null_on_oob=True).alias("_p1"),
        top.list.get(1, null_on_oob=True).alias("_p2"),
    )
    classes = ev.group_by("user_id", "prediction").agg(pl.len().alias("k"))
    cls = (
        classes.group_by("user_id")
        .agg(
            pl.col("k").alias("_k"),
        )
        .with_columns(
            pl.col("_k").map_elements(_class_stats, return_dtype=pl.List(pl.Float64)).alias("_cs")
        )
        .select(
            "user_id",
            pl.col("_cs").list.get(0).alias("class_entropy"),
            pl.col("_cs").list.get(1).alias("class_balance"),
        )
    )
    conf = ev.group_by("user_id").agg(
        ((pl.col("_p1") - pl.col("_p2")) < LOW_MARGIN)
        .mean()
        .fill_null(0.0)
        .alias("low_margin_share"),
        pl.col("_p1").mean().alias("conf_mean"),
        pl.col("_p1").std().fill_null(0.0).alias("conf_std"),
        pl.col("_p1").quantile(0.1).alias("conf_p10"),
    )
    return cls.join(conf, on="user_id", how="left")


def _class_stats(counts) -> list[float]:
    c = np.asarray(list(counts), dtype=np.float64)
    k = max(len(c), 1)
    h = entropy(c)
    # normalised by the entropy of a uniform mix over 4 classes at least (a user who saw one
    # class cannot reach 1)
    norm = math.log(max(k, 4))
    balance = float(c.min() / c.max()) if k >= 2 else 0.0
    return [h / norm, balance]


# ---------------------------------------------------------------- the user table


def feature_matrix(features: pl.Series) -> np.ndarray:
    """The ``features`` list column as an (n, d) array (every row has the same width d)."""
    lengths = features.list.len()
    if features.len() == 0:
        return np.zeros((0, 0))
    width = int(lengths.max())
    if int(lengths.min()) != width:
        raise ValueError("events have features of different widths")
    flat = features.explode().to_numpy().astype(np.float64, copy=False)
    return flat.reshape(features.len(), width)


def population_reference(events, seed: int = 0) -> np.ndarray:
    """A sample of the archive's own queries, one distinct row per event, as the reference
    when no ``--reference`` data is given (the population is overwhelmingly legitimate);
    ``events`` is a frame or an :class:`audits.event_source.EventSource`."""
    sample = as_source(events).sample(REFERENCE_ROWS * 2, seed=seed)
    return feature_matrix(sample["features"])


def reference_of(source, reference: np.ndarray | Reference | None, seed: int = 0) -> Reference:
    """``reference`` prepared once (the population's sample when ``None``)."""
    if isinstance(reference, Reference):
        return reference
    return Reference(
        reference if reference is not None else population_reference(source, seed), seed
    )


def window_features(
    source,
    reference: np.ndarray | Reference | None = None,
    *,
    seed: int = 0,
    max_events: int = BATCH_EVENTS,
) -> pl.DataFrame:
    """:func:`user_features` of every user of an :class:`audits.event_source.EventSource`,
    computed a batch of whole users at a time (memory follows the batch, not the window);
    the same rows as one call over all the events."""
    source = as_source(source)
    if not source.user_counts():
        return empty_features()
    ref = reference_of(source, reference, seed)
    parts = [
        user_features(batch, ref, seed=seed) for batch in source.batches(max_events=max_events)
    ]
    return pl.concat(parts).sort("user_id")


def empty_features() -> pl.DataFrame:
    return pl.DataFrame(schema={"user_id": pl.String, **{c: pl.Float64 for c in FEATURE_COLUMNS}})


def user_features(
    events: pl.LazyFrame | pl.DataFrame,
    reference: np.ndarray | Reference | None = None,
    *,
    seed: int = 0,
) -> pl.DataFrame:
    """One row per user with every column of ``FEATURE_COLUMNS``; ``reference`` is the
    legitimate input distribution (rows x features, or prepared), else the events' own
    population. Each user's row depends only on their own events and the reference."""
    lf = events.lazy() if isinstance(events, pl.DataFrame) else events
    lf = lf.select(
        "event_id",
        "ts",
        "day",
        "user_id",
        "session_id",
        "features",
        "prediction",
        "probabilities",
    )
    df = lf.sort("user_id", "ts", "event_id").collect()
    if df.height == 0:
        return empty_features()
    ref = reference_of(df, reference, seed)
    ev = df.lazy()
    X = feature_matrix(df["features"])
    if X.shape[1] != ref.width:
        raise ValueError(f"events have {X.shape[1]} features, the reference {ref.width}")
    users = df["user_id"].rle()
    user_ids = users.struct.field("value").to_list()
    offsets = np.concatenate([[0], np.cumsum(users.struct.field("len").to_numpy())]).astype(
        np.int64
    )
    first = df.select(pl.col("features").is_first_distinct().over("user_id")).to_series()
    # one BLAS thread: the products are small, and a second thread waiting on a busy machine
    # made this step twice as slow (1.66M events: 17 s instead of 8.7 s)
    with threadpool_limits(1, user_api="blas"):
        geo = geometry_features(user_ids, offsets, X, ref, first.to_numpy(), seed)
    out = (
        timing_features(ev)
        .join(response_features(ev), on="user_id", how="left")
        .join(repetition_features(ev), on="user_id", how="left")
        .collect()
        .join(geo, on="user_id", how="left")
    )
    return out.select("user_id", *[pl.col(c).cast(pl.Float64) for c in FEATURE_COLUMNS]).sort(
        "user_id"
    )
