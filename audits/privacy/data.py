"""Train and holdout sets: Parquet or CSV with the model's features in order plus a label column."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from audits.errors import InputError

DATA_SUFFIXES = (".parquet", ".pq", ".csv")


@dataclass(frozen=True)
class LabelledSet:
    """Features, true labels (as indices into the model's ``classes_``) and where they came from."""

    name: str
    X: np.ndarray
    y: np.ndarray
    columns: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.y)


def read_table(path: str | Path, what: str) -> pl.DataFrame:
    """A Parquet or CSV file as a frame; anything unreadable is an :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise InputError(f"{what} {path}: expected a .parquet or .csv file, got {suffix or 'none'}")
    try:
        if suffix == ".csv":
            return pl.read_csv(path, infer_schema_length=10_000)
        return pl.read_parquet(path)
    except Exception as exc:  # polars raises many types for a corrupt file
        first = " ".join(str(exc).split())[:160]
        raise InputError(f"cannot read {what} {path}: {first}") from None


def to_labelled(
    frame: pl.DataFrame, *, name: str, label_column: str, classes: np.ndarray, width: int
) -> LabelledSet:
    """Split a frame into features and class indices, checking it fits the model."""
    if label_column not in frame.columns:
        raise InputError(f"{name} has no label column {label_column!r} (use --label-column)")
    if frame.height == 0:
        raise InputError(f"{name} is empty")
    features = [c for c in frame.columns if c != label_column]
    if len(features) != width:
        raise InputError(
            f"{name} has {len(features)} feature columns but the model takes {width} "
            "(expected the model's features in input order plus the label column)"
        )
    return LabelledSet(
        name=name,
        X=numeric_features(frame.select(features), name),
        y=label_indices(frame[label_column], classes, name),
        columns=tuple(features),
    )


def numeric_features(frame: pl.DataFrame, name: str) -> np.ndarray:
    """The frame as a float matrix; one-line errors for non-numeric, missing or non-finite."""
    bad = [c for c, t in frame.schema.items() if not (t.is_numeric() or t == pl.Boolean)]
    if bad:
        raise InputError(f"{name} has non-numeric feature columns: {', '.join(bad[:5])}")
    nulls = [c for c in frame.columns if frame[c].null_count()]
    if nulls:
        raise InputError(f"{name} has missing values in feature columns: {', '.join(nulls[:5])}")
    X = frame.to_numpy().astype(float)
    if not np.isfinite(X).all():
        raise InputError(f"{name} has non-finite feature values (NaN or inf)")
    return X


def label_indices(labels: pl.Series, classes: np.ndarray, name: str) -> np.ndarray:
    """Labels as indices into ``classes``; labels the model does not know are an error."""
    if labels.null_count():
        raise InputError(f"{name} has {labels.null_count()} rows without a label")
    lookup = {str(c): i for i, c in enumerate(classes.tolist())}
    values = labels.cast(pl.String).to_list()
    unknown = sorted({v for v in values if v not in lookup})
    if unknown and labels.dtype.is_float():
        values = [str(int(float(v))) if float(v).is_integer() else v for v in values]
        unknown = sorted({v for v in values if v not in lookup})
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise InputError(
            f"{name} has labels the model does not predict: {shown} "
            f"(model classes: {', '.join(map(str, classes.tolist()[:10]))})"
        )
    return np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values))


def load_sets(
    train: str | Path, holdout: str | Path, *, label_column: str, classes: np.ndarray, width: int
) -> tuple[LabelledSet, LabelledSet]:
    """Read train and holdout files and check they share one schema that fits the model."""
    train_frame = read_table(train, "training data")
    holdout_frame = read_table(holdout, "holdout data")
    if train_frame.columns != holdout_frame.columns:
        only_train = sorted(set(train_frame.columns) - set(holdout_frame.columns))
        only_hold = sorted(set(holdout_frame.columns) - set(train_frame.columns))
        detail = f"only in train: {only_train[:5]}, only in holdout: {only_hold[:5]}"
        if not only_train and not only_hold:
            detail = "same columns in a different order"
        raise InputError(f"training and holdout data have different columns ({detail})")
    kwargs = {"label_column": label_column, "classes": classes, "width": width}
    return (
        to_labelled(train_frame, name="training data", **kwargs),
        to_labelled(holdout_frame, name="holdout data", **kwargs),
    )
