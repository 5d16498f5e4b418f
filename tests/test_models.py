"""Loading served models: skops by default, ONNX, pickle only when trusted; errors as InputError."""

from __future__ import annotations

import pickle
from fractions import Fraction

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from audits.errors import InputError
from audits.models import load_served_model


@pytest.fixture(scope="module")
def cancer():
    X, y = load_breast_cancer(return_X_y=True)
    return X[:200], y[:200]


@pytest.fixture(scope="module")
def logreg(cancer):
    X, y = cancer
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)


def test_skops_round_trip(tmp_path, cancer, logreg):
    import skops.io as sio

    path = tmp_path / "m.skops"
    sio.dump(logreg, path)
    model = load_served_model(path)
    X, _ = cancer
    assert model.kind == "skops" and model.n_features_in == 30
    assert len(model.sha256) == 64
    np.testing.assert_array_equal(model.classes_, [0, 1])
    np.testing.assert_allclose(model.predict_proba(X), logreg.predict_proba(X))
    np.testing.assert_array_equal(model.predict(X), logreg.predict(X))


def test_skops_trusts_sklearn_types_only(tmp_path, cancer):
    import skops.io as sio

    X, y = cancer
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(X, y)
    sio.dump(forest, tmp_path / "rf.skops")
    assert load_served_model(tmp_path / "rf.skops").predict(X[:5]).shape == (5,)

    sio.dump({"model": forest, "extra": Fraction(1, 2)}, tmp_path / "odd.skops")
    with pytest.raises(InputError, match="outside scikit-learn.*fractions.Fraction"):
        load_served_model(tmp_path / "odd.skops")


@pytest.mark.parametrize("zipmap", [False, True])
def test_onnx_probabilities_and_zipmap(tmp_path, zipmap):
    from skl2onnx import to_onnx

    X, y = load_digits(return_X_y=True)
    X, y = X[:300], y[:300]
    clf = LogisticRegression(max_iter=300).fit(X, y)
    onx = to_onnx(clf, X[:1].astype(np.float32), options={"zipmap": zipmap})
    path = tmp_path / "m.onnx"
    path.write_bytes(onx.SerializeToString())
    model = load_served_model(path)
    assert model.kind == "onnx" and model.n_features_in == 64
    np.testing.assert_array_equal(model.classes_, clf.classes_)
    np.testing.assert_allclose(model.predict_proba(X), clf.predict_proba(X), atol=1e-4)
    assert (model.predict(X) == clf.predict(X)).mean() > 0.99


def test_pickle_needs_trust(tmp_path, cancer, logreg):
    path = tmp_path / "m.joblib"
    joblib.dump(logreg, path)
    with pytest.raises(InputError, match="arbitrary code.*--trust-pickle"):
        load_served_model(path)
    model = load_served_model(path, trust_pickle=True)
    assert model.kind == "pickle"
    assert model.predict(cancer[0][:3]).shape == (3,)


def test_label_only_model(tmp_path, cancer):
    X, y = cancer
    path = tmp_path / "svc.pkl"
    path.write_bytes(pickle.dumps(SVC().fit(X, y)))
    model = load_served_model(path, trust_pickle=True)
    assert model.label_only and model.predict_proba(X) is None


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("missing.skops", None, "not found"),
        ("model.txt", b"hello", "unknown model format"),
        ("bad.skops", b"not a zip", "cannot read skops"),
        ("bad.onnx", b"garbage", "cannot load ONNX"),
        ("bad.pkl", b"garbage", "cannot load pickle"),
    ],
)
def test_bad_files_are_input_errors(tmp_path, name, content, match):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=match) as info:
        load_served_model(path, trust_pickle=True)
    assert "\n" not in str(info.value)


def test_wrong_width_is_input_error(tmp_path, logreg):
    import skops.io as sio

    sio.dump(logreg, tmp_path / "m.skops")
    with pytest.raises(InputError, match="takes 30 features"):
        load_served_model(tmp_path / "m.skops").predict(np.zeros((2, 5)))
