"""The legitimate population: a correlated multi-cluster tabular task, and the model served on it.

Real rows live near a 5-dimensional manifold inside the 12-dimensional feature space (the
features are mixtures of a few latent factors), so uniform noise over the feature ranges is far
from every real row. Each cluster is a natural "slice" of the population (a region, a segment).
"""

from __future__ import annotations

import io
import re
import warnings
import zipfile
from dataclasses import dataclass

import numpy as np

WIDTH = 12
N_CLASSES = 4
LATENT = 5
N_CLUSTERS = 8
_POSITIVE = (0, 3, 7)  # amount-like features: softplus keeps them positive and skewed
# skops names arrays and memo entries after id(): "__id__": 1400..., "1400....npy"
_ID_PATTERN = re.compile(r'(?<="__id__": )(\d{6,})|(?<=")(\d{6,})(?=\.npy")')


@dataclass
class Population:
    """The generative process behind every natural row (users, training data, knockoff pools)."""

    centers: np.ndarray  # (C, LATENT)
    chol: np.ndarray  # (C, LATENT, LATENT)
    mixing: np.ndarray  # (LATENT, WIDTH)
    hidden: np.ndarray  # (LATENT, H): the labelling teacher's hidden layer
    hidden_bias: np.ndarray  # (H,)
    teacher: np.ndarray  # (H, N_CLASSES)
    class_bias: np.ndarray  # (N_CLASSES,) set so that the classes are roughly balanced
    cluster_class: np.ndarray  # (C,)
    scale: np.ndarray  # (WIDTH,)
    shift: np.ndarray  # (WIDTH,)
    weights: np.ndarray  # (C,) cluster shares

    @property
    def width(self) -> int:
        return self.mixing.shape[1]

    def latent(
        self,
        rng: np.random.Generator,
        clusters: np.ndarray,
        *,
        offset: np.ndarray | float = 0.0,
        spread: float = 1.0,
    ) -> np.ndarray:
        """Latent points, one per entry of ``clusters``, optionally shifted and widened."""
        eps = rng.standard_normal((len(clusters), LATENT)) * spread
        within = np.einsum("nij,nj->ni", self.chol[clusters], eps)
        return self.centers[clusters] + within + offset

    def features(self, rng: np.random.Generator, z: np.ndarray) -> np.ndarray:
        """Observed features of latent points: mixed, noisy, scaled to realistic units."""
        x = z @ self.mixing + 0.08 * rng.standard_normal((len(z), self.width))
        x[:, _POSITIVE] = np.logaddexp(0.0, 1.5 * x[:, _POSITIVE])
        return x * self.scale + self.shift

    def labels(self, rng: np.random.Generator, z: np.ndarray, clusters: np.ndarray) -> np.ndarray:
        """Ground-truth labels: the cluster's class, bent by a nonlinear teacher, with noise."""
        return (self._logits(z, clusters) + 0.35 * rng.gumbel(size=(len(z), N_CLASSES))).argmax(1)

    def _logits(self, z: np.ndarray, clusters: np.ndarray) -> np.ndarray:
        own = np.eye(N_CLASSES)[self.cluster_class[clusters]]
        return own + np.tanh(z @ self.hidden + self.hidden_bias) @ self.teacher + self.class_bias

    def sample(
        self,
        rng: np.random.Generator,
        n: int,
        *,
        weights: np.ndarray | None = None,
        offset: np.ndarray | float = 0.0,
        spread: float = 1.0,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(X, y, clusters)`` for ``n`` rows; ``weights``/``offset``/``spread`` shift the law."""
        clusters = rng.choice(
            len(self.weights), size=n, p=self.weights if weights is None else weights
        )
        z = self.latent(rng, clusters, offset=offset, spread=spread)
        return self.features(rng, z), self.labels(rng, z, clusters), clusters

    def slice_sample(
        self, rng: np.random.Generator, cluster: int, n: int, offset: np.ndarray, spread: float
    ) -> np.ndarray:
        """Rows from one cluster around a user-specific offset: one user's slice."""
        z = self.latent(rng, np.full(n, cluster), offset=offset, spread=spread)
        return self.features(rng, z)


def make_population(rng: np.random.Generator) -> Population:
    """A random but fixed-by-seed population with two clusters per class."""
    centers = rng.standard_normal((N_CLUSTERS, LATENT)) * 1.6
    chol = np.stack(
        [
            np.tril(rng.standard_normal((LATENT, LATENT)) * 0.25) + np.eye(LATENT) * 0.55
            for _ in range(N_CLUSTERS)
        ]
    )
    mixing = rng.standard_normal((LATENT, WIDTH)) / np.sqrt(LATENT)
    hidden = rng.standard_normal((LATENT, 16)) * 1.2
    hidden_bias = rng.standard_normal(16) * 0.5
    teacher = rng.standard_normal((16, N_CLASSES)) * 0.6
    scale = np.round(10.0 ** rng.uniform(-1, 3, WIDTH), 3)
    shift = np.round(rng.uniform(-2, 2, WIDTH) * scale, 3)
    weights = rng.dirichlet(np.full(N_CLUSTERS, 4.0))
    cluster_class = np.arange(N_CLUSTERS) % N_CLASSES
    population = Population(
        centers,
        chol,
        mixing,
        hidden,
        hidden_bias,
        teacher - teacher.mean(0),
        np.zeros(N_CLASSES),
        cluster_class,
        scale,
        shift,
        weights,
    )
    _balance_classes(population, rng)
    return population


def _balance_classes(population: Population, rng: np.random.Generator) -> None:
    """Nudge the class biases until no class is rare (a few fixed-point steps)."""
    clusters = rng.choice(N_CLUSTERS, size=20_000, p=population.weights)
    z = population.latent(rng, clusters)
    for _ in range(6):
        share = np.bincount(population._logits(z, clusters).argmax(1), minlength=N_CLASSES)
        share = np.maximum(share / len(z), 1e-3)
        population.class_bias -= 0.5 * np.log(share * N_CLASSES)


def feature_decimals(X: np.ndarray) -> np.ndarray:
    """Decimals per feature that keep about six significant digits at the feature's scale."""
    magnitude = np.quantile(np.abs(X), 0.99, axis=0)
    return np.clip(5 - np.floor(np.log10(np.maximum(magnitude, 1e-9))), 0, 9).astype(int)


def round_features(X: np.ndarray, decimals: np.ndarray) -> np.ndarray:
    """Round each column to its decimals: exactly the values the log will hold."""
    factor = 10.0**decimals
    return np.round(X * factor) / factor


def train_served_model(X: np.ndarray, y: np.ndarray, seed: int):
    """The served classifier: a standardising MLP with ``predict_proba`` (deterministic L-BFGS)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(),
        MLPClassifier(
            hidden_layer_sizes=(32, 32),
            solver="lbfgs",
            alpha=1e-3,
            max_iter=120,
            random_state=seed,
        ),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        model.fit(X, y)
    return model


def dump_model_bytes(model) -> bytes:
    """skops bytes made reproducible: the same model always gives the same file.

    skops names arrays and memo entries after ``id()`` of live objects; those numbers are
    renumbered in order of first appearance, and the zip timestamps are fixed.
    """
    import skops.io as sio

    source = zipfile.ZipFile(io.BytesIO(sio.dumps(model)))
    numbers: dict[str, str] = {}

    def renumber(match: re.Match) -> str:
        return numbers.setdefault(match.group(0), str(len(numbers) + 1))

    entries = {"schema.json": _ID_PATTERN.sub(renumber, source.read("schema.json").decode())}
    for info in source.infolist():
        stem, _, ext = info.filename.partition(".")
        if info.filename != "schema.json":
            entries[f"{numbers.get(stem, stem)}.{ext}"] = source.read(info.filename)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            target.writestr(info, entries[name])
    return out.getvalue()
