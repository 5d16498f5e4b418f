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


def member_pool_z(groups: pl.DataFrame, own: pl.DataFrame, population: np.ndarray) -> pl.DataFrame:
    """``(group_id, pool_z)``: each group's members' own evidence pooled, in z units.

    Every member's own score is standardised by the population's median and 1.4826 x MAD;
    the pool is Stouffer's sum of ``k`` members each counted at the *median* member's z,
    ``sqrt(k) x median z``: many keys each a little suspicious add up, one strong member
    (judged on its own already) does not carry colleagues who show nothing. ``own`` has
    ``user_id`` and ``own`` (the member's score)."""
    pop = np.asarray(population, dtype=np.float64)
    pop = pop[np.isfinite(pop)]
    if len(pop) == 0 or groups.height == 0:
        return pl.DataFrame(schema={"group_id": pl.String, "pool_z": pl.Float64})
    centre = float(np.median(pop))
    scale = 1.4826 * float(np.median(np.abs(pop - centre)))
    scale = scale if scale > 1e-9 else 1.0
    return (
        groups.join(own, on="user_id")
        .group_by("group_id")
        .agg(
            ((pl.col("own").median() - centre) / scale * pl.len().cast(pl.Float64).sqrt()).alias(
                "pool_z"
            )
        )
    )
