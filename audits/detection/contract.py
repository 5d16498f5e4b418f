"""The detector contract: what every detector of the suite is, and how the registry names it.

A detector is fitted on one window's user feature table and then scores any feature rows
(higher = more suspicious); its fitted state lives in attributes ending in ``_`` (scikit-learn's
and PyOD's convention). A :class:`DetectorSpec` registers one under the name of its
``score_<name>`` column with its role in the combined score: ``EVIDENCE`` (directional evidence
of extraction, in z units) or ``TIE_BREAK`` (an unsupervised detector whose population rank only
breaks ties among users that already show evidence).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import polars as pl

EVIDENCE = "evidence"
TIE_BREAK = "tie_break"


class Detector(Protocol):
    """``fit`` on a window's user features, then ``decision_function`` on any feature rows."""

    def fit(self, features: pl.DataFrame) -> Detector: ...

    def decision_function(self, features: pl.DataFrame) -> np.ndarray: ...


@dataclass(frozen=True)
class DetectorContext:
    """What a detector may be built with: the run's seed and the reference null (or None)."""

    seed: int = 0
    reference: Any = None


@dataclass(frozen=True)
class DetectorSpec:
    """One registered detector: its score column's name, its role and how to build it."""

    name: str
    role: str
    build: Callable[[DetectorContext], Detector]

    def __post_init__(self) -> None:
        if self.role not in (EVIDENCE, TIE_BREAK):
            raise ValueError(f"detector {self.name!r}: unknown role {self.role!r}")
