"""Sybil candidate groups: keys sharing a /24 that are active on a common day, and the features
of each group's pooled traffic."""

from __future__ import annotations

import numpy as np
import polars as pl

from audits.event_source import BATCH_EVENTS, EventSource, as_source, pack
from audits.features import Reference, empty_features, reference_of, user_features

Events = pl.DataFrame | EventSource


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
