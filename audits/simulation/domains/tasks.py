"""The prediction tasks behind the extra simulated domains: their rows, column geometry and the
model each one serves.

Every task is a base table of rows (a data set bundled with scikit-learn, or rows drawn from a
small generative process written here) split into a *private* part, which the API owner's
customers and training data come from, and a *public* part of the same task, which an attacker
can download (a held-out split, or another institution's data). New natural rows are drawn by
interpolating between a row and one of its same-class neighbours, plus a little noise, then
made valid for the schema (bounds, integer columns, one-hot groups).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

NEIGHBOURS = 8


@dataclass
class Geometry:
    """What the API schema says about the columns: bounds, integer and one-hot columns."""

    lo: np.ndarray
    hi: np.ndarray
    decimals: np.ndarray
    integer: np.ndarray  # bool per column
    onehot: list[list[int]] = field(default_factory=list)  # column groups, one 1 each

    @property
    def width(self) -> int:
        return len(self.lo)

    def valid(self, X: np.ndarray) -> np.ndarray:
        """Rows as the API accepts and logs them: clipped, rounded, one-hot groups projected
        onto their largest entry."""
        X = np.clip(np.asarray(X, dtype=np.float64), self.lo, self.hi)
        for group in self.onehot:
            top = np.asarray(group)[X[:, group].argmax(axis=1)]
            X[:, group] = 0.0
            X[np.arange(len(X)), top] = 1.0
        factor = 10.0**self.decimals
        X = np.round(X * factor) / factor
        X[:, self.integer] = np.round(X[:, self.integer])
        return X + 0.0  # no negative zeros in the log


@dataclass
class Rows:
    """A table of labelled rows and a sampler of new rows near them."""

    X: np.ndarray
    y: np.ndarray
    _pairs: np.ndarray | None = None  # (n, NEIGHBOURS) same-class neighbour indices

    def neighbours(self) -> np.ndarray:
        if self._pairs is None:
            self._pairs = _same_class_neighbours(self.X, self.y)
        return self._pairs

    def sample(
        self, rng: np.random.Generator, n: int, geometry: Geometry, noise: float = 0.05
    ) -> tuple[np.ndarray, np.ndarray]:
        """``n`` new valid rows and the labels of the rows they were made from."""
        i = rng.integers(len(self.X), size=n)
        j = self.neighbours()[i, rng.integers(NEIGHBOURS, size=n)]
        lam = rng.random((n, 1))
        spread = self.X.std(axis=0)
        X = self.X[i] + lam * (self.X[j] - self.X[i])
        X = X + noise * spread * rng.standard_normal(X.shape)
        return geometry.valid(X), self.y[i]


def _same_class_neighbours(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    scale = np.where(X.std(axis=0) > 0, X.std(axis=0), 1.0)
    Z = X / scale
    out = np.zeros((len(X), NEIGHBOURS), dtype=np.int64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = min(NEIGHBOURS + 1, len(idx))
        _, nn = NearestNeighbors(n_neighbors=k).fit(Z[idx]).kneighbors(Z[idx])
        nn = nn[:, 1:] if k > 1 else nn
        out[idx] = idx[nn[:, np.arange(NEIGHBOURS) % nn.shape[1]]]
    return out


@dataclass
class Task:
    """One domain: private and public rows, the schema, the classes and the served model."""

    name: str
    private: Rows
    public: Rows
    geometry: Geometry
    n_classes: int
    make_model: Callable[[int], object]
    model_kind: str

    @property
    def width(self) -> int:
        return self.geometry.width

    def natural(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows like the API owner's own customers send (and the model was trained on)."""
        return self.private.sample(rng, n, self.geometry)

    def outside(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Rows of the same task from a public source (no labels: the attacker has the rows)."""
        return self.public.sample(rng, n, self.geometry)[0]


def _geometry(
    X: np.ndarray,
    *,
    integer: np.ndarray | None = None,
    onehot: list[list[int]] | None = None,
    decimals: np.ndarray | None = None,
    lo: np.ndarray | None = None,
    hi: np.ndarray | None = None,
) -> Geometry:
    width = X.shape[1]
    integer = np.zeros(width, bool) if integer is None else integer
    if decimals is None:
        magnitude = np.quantile(np.abs(X), 0.99, axis=0)
        decimals = np.clip(4 - np.floor(np.log10(np.maximum(magnitude, 1e-9))), 0, 6)
    decimals = np.where(integer, 0, decimals).astype(int)
    span = X.max(axis=0) - X.min(axis=0)
    lo = np.where(X.min(axis=0) >= 0, 0.0, X.min(axis=0) - 0.1 * span) if lo is None else lo
    hi = X.max(axis=0) + 0.1 * span if hi is None else hi
    return Geometry(lo, hi, decimals, integer, onehot or [])


def _split(X: np.ndarray, y: np.ndarray, rng: np.random.Generator, public_share: float):
    """The population of a bundled data set (every row) and a stratified public split of it.

    A bundled set is small, so new rows are interpolations of its rows: customers and the
    reference sample come from all of them, and the public split is a subset, so public rows
    are not further from the reference than customers' (no artefact of the split)."""
    order = rng.permutation(len(X))
    public = np.zeros(len(X), bool)
    for c in np.unique(y):
        idx = order[y[order] == c]
        public[idx[: int(round(public_share * len(idx)))]] = True
    return Rows(X, y), Rows(X[public], y[public])


# ---------------------------------------------------------------- served models


def _quiet_fit(model, X: np.ndarray, y: np.ndarray):
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        return model.fit(X, y)


def logistic(seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=400))


def boosting(seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        max_iter=120, learning_rate=0.1, early_stopping=False, random_state=seed
    )


def forest(seed: int):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(
        n_estimators=60, max_depth=12, min_samples_leaf=3, random_state=seed, n_jobs=1
    )


def mlp(seed: int):
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        StandardScaler(),
        MLPClassifier(
            hidden_layer_sizes=(48,), solver="lbfgs", alpha=1e-2, max_iter=150, random_state=seed
        ),
    )


def train(task: Task, X: np.ndarray, y: np.ndarray, seed: int):
    """The served model of ``task`` fitted on ``(X, y)``."""
    return _quiet_fit(task.make_model(seed), X, y)


# ---------------------------------------------------------------- bundled data sets


def cancer(rng: np.random.Generator) -> Task:
    """Breast-cancer diagnosis: 30 positive, heavy-tailed measurements, 2 classes, boosted trees."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    X, y = data.data.astype(float), data.target.astype(np.int64)
    private, public = _split(X, y, rng, 0.35)
    return Task("cancer", private, public, _geometry(X), 2, boosting, "HistGradientBoosting")


def digits(rng: np.random.Generator) -> Task:
    """8x8 handwritten digits: 64 integer pixels in 0..16, 10 classes, an MLP."""
    from sklearn.datasets import load_digits

    data = load_digits()
    X, y = data.data.astype(float), data.target.astype(np.int64)
    private, public = _split(X, y, rng, 0.35)
    width = X.shape[1]
    geometry = _geometry(
        X, integer=np.ones(width, bool), lo=np.zeros(width), hi=np.full(width, 16.0)
    )
    return Task("digits", private, public, geometry, 10, mlp, "MLP")


def wine(rng: np.random.Generator) -> Task:
    """Wine cultivars: 13 chemical measurements, 3 classes, logistic regression."""
    from sklearn.datasets import load_wine

    data = load_wine()
    X, y = data.data.astype(float), data.target.astype(np.int64)
    private, public = _split(X, y, rng, 0.35)
    return Task("wine", private, public, _geometry(X), 3, logistic, "LogisticRegression")


# ---------------------------------------------------------------- generated tasks


_CATEGORIES = {"housing": 3, "purpose": 6, "employment": 4, "region": 5}


def _credit_rows(rng: np.random.Generator, n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Loan applicants: 8 numeric columns (integer, bounded and heavy-tailed) and four one-hot
    categoricals; the default risk is a nonlinear function of both."""
    age = np.clip(np.round(rng.normal(41 + 6 * shift, 12, n)), 18, 85)
    income = np.round(rng.lognormal(10.6 + 0.25 * shift, 0.7, n), 2)
    debt_ratio = np.round(rng.beta(2 + shift, 5, n), 4)
    accounts = rng.poisson(4 + 2 * shift, n).astype(float)
    months = np.clip(np.round(rng.exponential(60, n) * (age - 17) / 30), 0, 600)
    utilisation = np.round(np.clip(rng.beta(1.5, 3, n) + 0.1 * shift, 0, 1), 4)
    late = rng.negative_binomial(1, 0.7 - 0.1 * shift, n).astype(float)
    amount = np.round(rng.lognormal(9.2, 0.9, n), 2)
    cats = []
    for k, levels in enumerate(_CATEGORIES.values()):
        weights = np.roll(np.linspace(3, 1, levels), int(round(shift * (k + 1))))
        cats.append(rng.choice(levels, n, p=weights / weights.sum()))
    risk = (
        -1.2
        + 2.6 * debt_ratio
        + 1.8 * utilisation**2
        + 0.55 * np.minimum(late, 4)
        - 0.35 * np.log(income / 20_000)
        + 0.25 * np.log1p(amount / income * 10)
        - 0.012 * (age - 40)
        - 0.004 * months
        + np.array([0.0, 0.45, -0.2])[cats[0]]
        + np.array([0.0, 0.3, -0.3, 0.6, 0.1, -0.1])[cats[1]]
        + np.array([0.5, 0.0, -0.4, 0.2])[cats[2]]
        + 0.4 * np.sin(cats[3] + debt_ratio * 3)
    )
    y = (risk + rng.logistic(0, 0.6, n) > 0.6).astype(np.int64)
    onehots = [np.eye(levels)[c] for c, levels in zip(cats, _CATEGORIES.values(), strict=True)]
    numeric = np.column_stack(
        [age, income, debt_ratio, accounts, months, utilisation, late, amount]
    )
    return np.column_stack([numeric, *onehots]), y


def credit(rng: np.random.Generator) -> Task:
    """Credit scoring: a mixed table (8 numeric, 18 one-hot columns), 2 classes, a random forest.
    The public data is another lender's book: older, richer, other category mix."""
    X, y = _credit_rows(rng, 9000, 0.0)
    Xp, yp = _credit_rows(rng, 4000, 0.4)
    width = X.shape[1]
    integer = np.zeros(width, bool)
    integer[[0, 3, 4, 6]] = True
    integer[8:] = True
    onehot, at = [], 8
    for levels in _CATEGORIES.values():
        onehot.append(list(range(at, at + levels)))
        at += levels
    decimals = np.array([0, 2, 4, 0, 0, 4, 0, 2] + [0] * (width - 8))
    lo = np.zeros(width)
    lo[0] = 18
    hi = np.ones(width)
    hi[[0, 1, 3, 4, 6, 7]] = [85, 2_000_000, 60, 600, 30, 1_000_000]
    geometry = Geometry(lo, hi, decimals, integer, onehot)
    return Task("credit", Rows(X, y), Rows(Xp, yp), geometry, 2, forest, "RandomForest")


_VOCABULARY = 200
_TOPICS = 4


def _topic_model(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Word distributions: one per topic (sparse, Zipf-weighted) and a background."""
    zipf = 1.0 / np.arange(1, _VOCABULARY + 1) ** 0.9
    background = rng.permutation(zipf)
    topics = np.stack(
        [
            rng.dirichlet(np.full(_VOCABULARY, 0.08)) * 0.7
            + 0.3 * rng.permutation(zipf) / zipf.sum()
            for _ in range(_TOPICS)
        ]
    )
    return topics, background / background.sum()


def _documents(
    rng: np.random.Generator, topics: np.ndarray, background: np.ndarray, n: int, length: float
) -> tuple[np.ndarray, np.ndarray]:
    """Bag-of-words counts: a topic (the class), a mixing share with the background, a length."""
    y = rng.integers(_TOPICS, size=n)
    share = rng.beta(3, 2, n)[:, None]
    words = share * topics[y] + (1 - share) * background
    lengths = np.maximum(5, rng.lognormal(np.log(length), 0.6, n)).astype(int)
    counts = np.stack([rng.multinomial(k, p) for k, p in zip(lengths, words, strict=True)])
    return counts.astype(float), y.astype(np.int64)


def text(rng: np.random.Generator) -> Task:
    """Document topic: 200 sparse integer word counts, 4 classes, logistic regression. The
    public corpus is shorter documents with another background vocabulary."""
    topics, background = _topic_model(rng)
    X, y = _documents(rng, topics, background, 8000, 60)
    _, other = _topic_model(rng)
    Xp, yp = _documents(rng, topics, 0.75 * background + 0.25 * other, 3000, 45)
    width = X.shape[1]
    geometry = Geometry(
        np.zeros(width),
        np.full(width, 200.0),
        np.zeros(width, int),
        np.ones(width, bool),
    )
    private, public = Rows(X, y), Rows(Xp, yp)
    return Task("text", private, public, geometry, _TOPICS, logistic, "LogisticRegression")


def sensor(rng: np.random.Generator) -> Task:
    """Machine state from 8 sensors (narrow): bounded ratios and heavy-tailed magnitudes from a
    make_classification process, 3 classes, an MLP. The public data is another plant's sensors,
    recalibrated (offset and gain)."""
    from sklearn.datasets import make_classification

    seed = int(rng.integers(2**31))
    Z, y = make_classification(
        n_samples=12_000,
        n_features=8,
        n_informative=6,
        n_redundant=1,
        n_classes=3,
        n_clusters_per_class=2,
        class_sep=1.2,
        random_state=seed,
    )
    X = np.column_stack(
        [
            1 / (1 + np.exp(-Z[:, :3])),  # bounded ratios
            np.exp(0.8 * Z[:, 3:6]),  # heavy-tailed magnitudes
            Z[:, 6:] * 10 + 50,  # temperatures
        ]
    )
    public = rng.random(len(X)) < 0.3
    gain = 1 + rng.normal(0, 0.05, 8)
    Xp = X[public] * gain + rng.normal(0, 0.05, 8) * X.std(axis=0)
    geometry = _geometry(X[~public], lo=np.zeros(8), decimals=np.full(8, 3))
    geometry.hi[:3] = 1.0
    return Task(
        "sensor",
        Rows(X[~public], y[~public].astype(np.int64)),
        Rows(Xp, y[public].astype(np.int64)),
        geometry,
        3,
        mlp,
        "MLP",
    )


def clinic(rng: np.random.Generator) -> Task:
    """Disease progression (the held-out test bed, never tuned on): scikit-learn's diabetes
    table, 10 raw columns (integer age, a two-valued sex column, body measurements and six
    serum values), the one-year progression cut at its tertiles into 3 classes, boosted trees."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes(scaled=False)
    X = data.data.astype(float)
    y = np.digitize(data.target, np.quantile(data.target, [1 / 3, 2 / 3])).astype(np.int64)
    private, public = _split(X, y, rng, 0.35)
    integer = np.zeros(X.shape[1], bool)
    integer[[0, 1]] = True  # age in years, sex coded 1 / 2
    geometry = _geometry(X, integer=integer)
    geometry.lo[1], geometry.hi[1] = 1.0, 2.0
    return Task("clinic", private, public, geometry, 3, boosting, "HistGradientBoosting")


TASKS: dict[str, Callable[[np.random.Generator], Task]] = {
    "wine": wine,
    "sensor": sensor,
    "credit": credit,
    "cancer": cancer,
    "digits": digits,
    "text": text,
    "clinic": clinic,  # held out: added after the detector's knobs were chosen, never tuned on
}
