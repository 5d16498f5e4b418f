"""Logged events as arrays: one subject's (or one batch of users') traffic in time order
(:func:`traffic`), the label each probability column stands for (:func:`proba_columns`) and the
reference inputs sampled from unflagged users' logs (:func:`logged_reference`). Every reader
takes a Polars frame or an :class:`audits.event_source.EventSource` and reads samples, not the
window."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from audits.event_source import EventSource, as_source
from audits.features import feature_matrix

REFERENCE_ROWS = 4_000
REFERENCE_OVERSAMPLE = 2  # logged reference: sample this many times the rows, then dedupe
PROBA_SAMPLE_ROWS = 50_000  # labelled events read to map probability columns to labels
_TRAFFIC_COLUMNS = ("event_id", "ts", "user_id", "features", "prediction", "probabilities")


def proba_columns(
    events: pl.DataFrame | EventSource, *, rows: int = PROBA_SAMPLE_ROWS, seed: int = 0
) -> np.ndarray | None:
    """The label each probability column stands for: for column k, the logged prediction
    most often seen where column k is the largest (``None`` when no probabilities), read from
    a sample of ``rows`` labelled events (a frame or an event source)."""
    sample = as_source(events).sample(rows, seed=seed, labelled=True)
    if "probabilities" not in sample.columns:
        return None
    found = sample.filter(
        pl.col("probabilities").is_not_null() & pl.col("prediction").is_not_null()
    ).select(
        pl.col("probabilities").list.arg_max().alias("k"),
        pl.col("probabilities").list.len().alias("width"),
        "prediction",
    )
    if found.height == 0:
        return None
    width = int(found["width"].max())
    top = (
        found.group_by("k", "prediction")
        .len()
        .sort("len", descending=True)
        .unique("k", keep="first")
    )
    mapping = dict(zip(top["k"].to_list(), top["prediction"].to_list(), strict=True))
    # columns never the largest: the classes in sorted order that no column took yet
    rest = iter(sorted(set(found["prediction"].unique().to_list()) - set(mapping.values())))
    labels = [mapping.get(k) or next(rest, f"class_{k}") for k in range(width)]
    return np.asarray(labels, dtype=str)


@dataclass
class Traffic:
    """One subject's (or one batch of users') logged traffic as arrays, in time order."""

    X: np.ndarray
    y: np.ndarray
    proba: np.ndarray | None
    ts_s: np.ndarray  # seconds since the epoch
    user: np.ndarray
    key: np.ndarray  # the user as a dense integer code (hashing ints is cheap, strings not)
    costs: dict = field(default_factory=dict, repr=False)  # LegitCosts per DefenceSettings


def traffic(events: pl.DataFrame, width: int | None = None) -> Traffic:
    """``events`` (any users) in time order as arrays; rows without a logged prediction (and
    features of another width than ``width``) are left out, since the subject learnt nothing
    from them. Probabilities are kept when every row has them, all of one width."""
    wanted = [c for c in _TRAFFIC_COLUMNS if c in events.columns]
    ev = events.select(wanted).filter(pl.col("prediction").is_not_null()).sort("ts", "event_id")
    if width is not None and ev.height:
        ev = ev.filter(pl.col("features").list.len() == width)
    X = feature_matrix(ev["features"]) if ev.height else np.zeros((0, width or 0))
    ts = ev["ts"].dt.epoch("ms").to_numpy().astype(np.float64) / 1000.0
    y = ev["prediction"].to_numpy().astype(str)
    key = ev["user_id"].rank("dense").to_numpy().astype(np.int64)
    return Traffic(X, y, _probabilities(ev), ts, ev["user_id"].to_numpy(), key)


def _probabilities(ev: pl.DataFrame) -> np.ndarray | None:
    """The probabilities as an (n, k) array when every row has them, all of one width."""
    if "probabilities" not in ev.columns or ev.height == 0:
        return None
    column = ev["probabilities"]
    if column.null_count() or column.list.len().n_unique() != 1:
        return None
    return feature_matrix(column)


def logged_reference(
    events: pl.DataFrame | EventSource,
    exclude: Iterable[str],
    *,
    rows: int = REFERENCE_ROWS,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference inputs when no ``--reference`` and model are given: up to ``rows`` distinct
    queries (with their logged answers, the served model's) from a seeded sample of
    ``REFERENCE_OVERSAMPLE`` x ``rows`` labelled events of users not in ``exclude``."""
    sample = as_source(events).sample(
        REFERENCE_OVERSAMPLE * rows, seed=seed, exclude=sorted(set(exclude)), labelled=True
    )
    ev = sample.unique("features", keep="first", maintain_order=True).head(rows)
    if ev.height == 0:
        return np.zeros((0, 0)), np.zeros(0, dtype=str)
    return feature_matrix(ev["features"]), ev["prediction"].to_numpy().astype(str)
