"""Loading the model a team serves: skops (secure, the default), ONNX, and trusted pickles.

Every loader returns a :class:`ServedModel`, one small interface over the three formats:
``predict``, ``predict_proba`` (``None`` for a model that serves labels only), ``classes_``,
``n_features_in`` and the file's ``sha256``. Anything a user can fix (a missing or corrupt
file, an unknown extension, an untrusted type, a pickle without ``--trust-pickle``) raises
:class:`~audits.errors.InputError` with a one-line message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audits.errors import InputError

SKOPS_SUFFIXES = (".skops",)
ONNX_SUFFIXES = (".onnx",)
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
TRUSTED_MODULE_PREFIXES = ("sklearn.", "numpy.", "scipy.")

ProbaFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class ServedModel:
    """A loaded model behind one interface, whatever the file format.

    ``predict_proba(X)`` returns ``None`` when the model serves labels only; its columns
    follow ``classes_``.
    """

    path: Path
    kind: str
    sha256: str
    n_features_in: int
    classes_: np.ndarray
    _predict: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    _predict_proba: ProbaFn | None = field(default=None, repr=False)
    estimator: Any = field(default=None, repr=False)

    @property
    def label_only(self) -> bool:
        """True when the model serves labels only (no probabilities)."""
        return self._predict_proba is None

    def predict(self, X) -> np.ndarray:
        """Predicted labels for the rows of ``X``."""
        return np.asarray(self._predict(self._check(X)))

    def predict_proba(self, X) -> np.ndarray | None:
        """Class probabilities (columns in ``classes_`` order), or ``None`` if label-only."""
        if self._predict_proba is None:
            return None
        return np.asarray(self._predict_proba(self._check(X)), dtype=float)

    def _check(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] != self.n_features_in:
            raise InputError(
                f"model {self.path.name} takes {self.n_features_in} features, "
                f"got an array of shape {X.shape}"
            )
        return X


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_served_model(path: str | Path, *, trust_pickle: bool = False) -> ServedModel:
    """Load a served model file: ``.skops`` (default), ``.onnx``, or a pickle if trusted."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model not found: {path}")
    suffix = path.suffix.lower()
    if suffix in SKOPS_SUFFIXES:
        estimator, kind = load_skops_estimator(path), "skops"
    elif suffix in ONNX_SUFFIXES:
        return _load_onnx(path)
    elif suffix in PICKLE_SUFFIXES:
        estimator, kind = _load_pickle(path, trust_pickle), "pickle"
    else:
        raise InputError(
            f"unknown model format {suffix or '(no extension)'!r} for {path}: "
            "expected .skops, .onnx, or .pkl/.pickle/.joblib with --trust-pickle"
        )
    return _from_estimator(path, kind, estimator)


def load_skops_estimator(path: Path) -> Any:
    """The object in a ``.skops`` file, loaded only when every type in it comes from
    scikit-learn, NumPy or SciPy; anything else is an :class:`InputError`."""
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # any parse failure means a corrupt file
        raise InputError(f"cannot read skops model {path}: {_brief(exc)}") from None
    refused = [t for t in untrusted if not t.startswith(TRUSTED_MODULE_PREFIXES)]
    if refused:
        raise InputError(
            f"skops model {path} contains types outside scikit-learn/numpy/scipy, "
            f"refusing to load: {', '.join(sorted(refused))}"
        )
    try:
        return sio.load(path, trusted=untrusted)
    except Exception as exc:
        raise InputError(f"cannot load skops model {path}: {_brief(exc)}") from None


def _load_pickle(path: Path, trust_pickle: bool) -> Any:
    if not trust_pickle:
        raise InputError(
            f"refusing to load pickle/joblib model {path}: loading a pickle can execute "
            "arbitrary code from the file; convert it to .skops or .onnx, or pass "
            "--trust-pickle if you trust its source"
        )
    import joblib

    try:
        return joblib.load(path)
    except Exception as exc:
        raise InputError(f"cannot load pickle model {path}: {_brief(exc)}") from None


def _from_estimator(path: Path, kind: str, estimator: Any) -> ServedModel:
    if not hasattr(estimator, "predict"):
        raise InputError(f"{path} holds a {type(estimator).__name__}, not a model with predict()")
    width = getattr(estimator, "n_features_in_", None)
    classes = getattr(estimator, "classes_", None)
    if width is None or classes is None:
        raise InputError(
            f"{path} holds an unfitted or non-classifier {type(estimator).__name__} "
            "(no n_features_in_/classes_)"
        )
    proba = _estimator_proba(estimator)
    return ServedModel(
        path=path,
        kind=kind,
        sha256=file_sha256(path),
        n_features_in=int(width),
        classes_=np.asarray(classes),
        _predict=estimator.predict,
        _predict_proba=proba,
        estimator=estimator,
    )


def _estimator_proba(estimator: Any) -> ProbaFn | None:
    """``predict_proba`` when the estimator really offers it (SVC(probability=False) doesn't)."""
    try:
        method = estimator.predict_proba
    except AttributeError:
        return None
    return method


def _load_onnx(path: Path) -> ServedModel:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InputError(f"cannot load ONNX model {path}: {_brief(exc)}") from None
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 2 or not isinstance(inputs[0].shape[1], int):
        raise InputError(f"ONNX model {path} must take one 2-D tensor input of fixed width")
    outputs = session.get_outputs()
    label_out = next((o for o in outputs if o.type.startswith("tensor")), None)
    if label_out is None:
        raise InputError(f"ONNX model {path} has no label output")
    proba_out = next((o for o in outputs if o is not label_out), None)
    runner = _OnnxRunner(session, inputs[0], label_out.name, proba_out and proba_out.name)
    classes = _onnx_classes(path)
    if classes is None:
        classes = runner.probe_classes()
    return ServedModel(
        path=path,
        kind="onnx",
        sha256=file_sha256(path),
        n_features_in=int(inputs[0].shape[1]),
        classes_=classes,
        _predict=runner.labels,
        _predict_proba=runner.probabilities if proba_out is not None else None,
        estimator=session,
    )


class _OnnxRunner:
    """Runs an ONNX classifier; handles both tensor and ZipMap (list of dicts) probabilities."""

    def __init__(self, session, model_input, label_name: str, proba_name: str | None):
        self.session = session
        self.input_name = model_input.name
        self.dtype = np.float64 if "double" in model_input.type else np.float32
        self.width = int(model_input.shape[1])
        self.label_name = label_name
        self.proba_name = proba_name

    def _run(self, X: np.ndarray, name: str):
        feed = {self.input_name: np.ascontiguousarray(X, dtype=self.dtype)}
        return self.session.run([name], feed)[0]

    def labels(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self._run(X, self.label_name))

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        raw = self._run(X, self.proba_name)
        if isinstance(raw, list):  # ZipMap: one {class: probability} dict per row
            if not raw:
                return np.zeros((0, 0))
            keys = list(raw[0].keys())
            return np.array([[row[k] for k in keys] for row in raw], dtype=float)
        return np.asarray(raw, dtype=float)

    def probe_classes(self) -> np.ndarray:
        """Class labels when the graph does not name them: from one all-zero query."""
        if self.proba_name is None:
            raise InputError("label-only ONNX model without class labels in its graph")
        raw = self._run(np.zeros((1, self.width)), self.proba_name)
        if isinstance(raw, list):
            return np.asarray(list(raw[0].keys()))
        return np.arange(np.asarray(raw).shape[1])


def _onnx_classes(path: Path) -> np.ndarray | None:
    """Class labels from the classifier node's attributes, if the ``onnx`` package is present."""
    try:
        import onnx
    except ImportError:
        return None
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # onnxruntime already accepted the file
        return None
    for node in graph.node:
        for attr in node.attribute:
            if attr.name == "classlabels_int64s" and attr.ints:
                return np.asarray(list(attr.ints))
            if attr.name == "classlabels_strings" and attr.strings:
                return np.asarray([s.decode() for s in attr.strings])
    return None


def _brief(exc: Exception) -> str:
    """An exception as one short line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]
