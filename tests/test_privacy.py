"""Privacy audit core: data checks, attack scores and metrics, extraction curves, the report."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from audits.errors import InputError
from audits.models import ServedModel
from audits.privacy import Thresholds, extraction, membership, run_privacy_audit
from audits.privacy.data import LabelledSet, load_sets, to_labelled
from reports.privacy import render_privacy_report

FAST = {"budgets": (100, 300), "families": ("logistic_regression",), "query_budget": 300}


def served(estimator, *, label_only: bool = False) -> ServedModel:
    return ServedModel(
        path=Path("model.skops"),
        kind="skops",
        sha256="0" * 64,
        n_features_in=estimator.n_features_in_,
        classes_=estimator.classes_,
        _predict=estimator.predict,
        _predict_proba=None if label_only else estimator.predict_proba,
        estimator=estimator,
    )


def halves(loader):
    X, y = loader(return_X_y=True)
    Xa, Xb, ya, yb = train_test_split(X, y, test_size=0.5, random_state=0, stratify=y)
    return LabelledSet("train", Xa, ya, ()), LabelledSet("holdout", Xb, yb, ())


def leaky_forest(train):
    return RandomForestClassifier(50, bootstrap=False, random_state=0).fit(train.X, train.y)


def regularised_logreg(train):
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=1000))
    return model.fit(train.X, train.y)


@pytest.fixture(scope="module")
def digits():
    return halves(load_digits)


@pytest.fixture(scope="module")
def cancer():
    return halves(load_breast_cancer)


@pytest.fixture(scope="module")
def digits_forest_audit(digits):
    train, holdout = digits
    return run_privacy_audit(served(leaky_forest(train)), train, holdout, **FAST)


# --- data ---------------------------------------------------------------------------------


def frame(X, y, names=None) -> pl.DataFrame:
    names = names or [f"f{i}" for i in range(X.shape[1])]
    return pl.DataFrame({**{n: X[:, i] for i, n in enumerate(names)}, "label": y})


def test_load_sets_parquet_and_csv(tmp_path, cancer):
    train, holdout = cancer
    frame(train.X, train.y).write_parquet(tmp_path / "t.parquet")
    frame(holdout.X, holdout.y).write_csv(tmp_path / "h.csv")
    a, b = load_sets(
        tmp_path / "t.parquet",
        tmp_path / "h.csv",
        label_column="label",
        classes=np.array([0, 1]),
        width=30,
    )
    assert len(a) == len(train) and len(b) == len(holdout)
    np.testing.assert_allclose(b.X, holdout.X)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda f: f.drop("f3"), "29 feature columns but the model takes 30"),
        (lambda f: f.head(0), "is empty"),
        (lambda f: f.with_columns(label=pl.lit(7)), "labels the model does not predict: 7"),
        (lambda f: f.rename({"label": "y"}), "no label column 'label'"),
        (lambda f: f.with_columns(f0=pl.lit("x")), "non-numeric feature columns: f0"),
        (lambda f: f.with_columns(f1=pl.lit(None, pl.Float64)), "missing values"),
    ],
)
def test_bad_data_is_one_line_input_error(cancer, change, match):
    bad = change(frame(cancer[0].X, cancer[0].y))
    with pytest.raises(InputError, match=match) as info:
        to_labelled(
            bad, name="training data", label_column="label", classes=np.array([0, 1]), width=30
        )
    assert "\n" not in str(info.value)


def test_mismatched_train_holdout_columns(tmp_path, cancer):
    train, holdout = cancer
    frame(train.X, train.y).write_parquet(tmp_path / "t.parquet")
    names = [f"g{i}" for i in range(30)]
    frame(holdout.X, holdout.y, names).write_parquet(tmp_path / "h.parquet")
    with pytest.raises(InputError, match="different columns"):
        load_sets(
            tmp_path / "t.parquet",
            tmp_path / "h.parquet",
            label_column="label",
            classes=np.array([0, 1]),
            width=30,
        )


def test_string_labels_map_to_classes():
    f = pl.DataFrame({"a": [1.0, 2.0], "label": ["cat", "dog"]})
    data = to_labelled(f, name="t", label_column="label", classes=np.array(["cat", "dog"]), width=1)
    np.testing.assert_array_equal(data.y, [0, 1])


# --- membership ---------------------------------------------------------------------------


def test_max_confidence_auc_equals_plain_roc_auc(digits):
    train, holdout = digits
    forest = leaky_forest(train)
    metrics, _ = membership.membership_audit(served(forest), train, holdout, seed=0)
    sample = membership.balanced_sample(train.X, train.y, holdout.X, holdout.y, 0)
    plain = roc_auc_score(sample.is_member, forest.predict_proba(sample.X).max(axis=1))
    assert metrics["max_confidence"]["auc"] == pytest.approx(plain, abs=1e-6)
    low, high = metrics["max_confidence"]["auc_ci"]
    assert low <= plain <= high


def test_balanced_sample_is_balanced_and_seeded(cancer):
    train, holdout = cancer
    big = LabelledSet("t", np.vstack([train.X] * 3), np.concatenate([train.y] * 3), ())
    a = membership.balanced_sample(big.X, big.y, holdout.X, holdout.y, 1)
    b = membership.balanced_sample(big.X, big.y, holdout.X, holdout.y, 1)
    assert a.is_member.sum() == (~a.is_member).sum() == len(holdout)
    np.testing.assert_array_equal(a.X, b.X)


def test_modified_entropy_matches_formula():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    y = np.array([0, 1])
    expected = []
    for row, label in zip(p, y, strict=True):
        py = row[label]
        mentr = -(1 - py) * math.log(py) - sum(
            row[i] * math.log(1 - row[i]) for i in range(3) if i != label
        )
        expected.append(-mentr)
    np.testing.assert_allclose(membership.score_modified_entropy(p, y), expected, rtol=1e-9)


def test_tpr_at_low_fpr_unresolvable_with_few_non_members():
    rng = np.random.default_rng(0)
    is_member = np.repeat([True, False], 150)
    result = membership.attack_metrics(rng.normal(size=300) + is_member, is_member, 0)
    assert result["tpr_at_1pct_fpr"] is not None
    assert result["tpr_at_0_1pct_fpr"] is None
    assert "1000 non-members" in result["unresolvable"]["tpr_at_0_1pct_fpr"]


def test_stronger_attacks_beat_max_confidence_on_leaky_model(digits_forest_audit):
    m = digits_forest_audit["membership"]
    assert m["lira_offline"]["auc"] > m["max_confidence"]["auc"]
    assert m["lira_offline"]["tpr_at_1pct_fpr"] > m["max_confidence"]["tpr_at_1pct_fpr"]
    assert m["loss"]["auc"] >= m["max_confidence"]["auc"] - 1e-9


@pytest.mark.parametrize("dataset", ["digits", "cancer"])
def test_gate_fails_leaky_forest_and_passes_regularised_logreg(request, dataset):
    train, holdout = request.getfixturevalue(dataset)
    thresholds = Thresholds(max_membership_auc=0.6, max_fidelity=None)
    forest = run_privacy_audit(
        served(leaky_forest(train)), train, holdout, thresholds=thresholds, **FAST
    )
    logreg = run_privacy_audit(
        served(regularised_logreg(train)), train, holdout, thresholds=thresholds, **FAST
    )
    assert not forest["passed"] and forest["membership_auc"] > 0.6
    assert logreg["passed"] and logreg["membership_auc"] <= 0.6
    assert forest["verdicts"] == {"membership": "fail", "extraction": "not_gated"}
    assert logreg["verdicts"] == {"membership": "pass", "extraction": "not_gated"}


def test_label_only_model_runs_label_only_paths(cancer):
    train, holdout = cancer
    svc = make_pipeline(StandardScaler(), SVC()).fit(train.X, train.y)
    result = run_privacy_audit(served(svc, label_only=True), train, holdout, **FAST)
    assert list(result["membership"]) == ["label_only"]
    assert "labels only" in result["membership_info"]["skipped"]["loss"]
    assert {c["granularity"] for c in result["extraction"]["curves"]} == {"top1_label"}
    assert result["extraction"]["served_as"] == "top1_label"


# --- extraction ---------------------------------------------------------------------------


def test_extraction_curves_cover_the_grid(digits_forest_audit):
    curves = digits_forest_audit["extraction"]["curves"]
    keys = {(c["source"], c["budget"], c["granularity"]) for c in curves}
    assert len(keys) == 2 * 2 * len(extraction.GRANULARITIES)
    assert all(0 <= c["fidelity"] <= 1 and 0 <= c["accuracy"] <= 1 for c in curves)
    natural = [c for c in curves if c["source"] == "natural"]
    assert all(c["queries"] <= c["budget"] for c in natural)


def test_fidelity_grows_with_budget(cancer):
    train, holdout = cancer
    model = served(regularised_logreg(train))
    curves = extraction.extraction_curves(
        model,
        holdout,
        budgets=(10, 1000),
        families=("logistic_regression",),
        sources=("uniform_noise",),
    )
    fid = {(c["budget"], c["granularity"]): c["fidelity"] for c in curves}
    assert fid[(1000, "probabilities")] >= fid[(10, "probabilities")]
    assert fid[(1000, "probabilities")] > 0.9


def test_served_output_granularities():
    proba = np.array([[0.123, 0.877]])
    np.testing.assert_allclose(
        extraction.served_output(proba, np.array([1]), "rounded_2dp", 2), [[0.12, 0.88]]
    )
    np.testing.assert_array_equal(
        extraction.served_output(proba, np.array([1]), "top1_label", 2), [[0, 1]]
    )


def test_recommendation_prefers_cheap_fidelity_cut():
    options = {
        "probabilities": {"accuracy_cost": 0.0, "fidelity_at_budget": 0.98},
        "rounded_2dp": {"accuracy_cost": 0.0, "fidelity_at_budget": 0.97},
        "top1_label": {"accuracy_cost": 0.0, "fidelity_at_budget": 0.90},
    }
    assert extraction.recommend(options, "probabilities")["option"] == "top1_label"
    options["top1_label"]["fidelity_at_budget"] = 0.975
    options["rounded_2dp"]["fidelity_at_budget"] = 0.978
    assert extraction.recommend(options, "probabilities")["option"] == "probabilities"


# --- report -------------------------------------------------------------------------------


def test_report_is_self_contained_deterministic_and_escaped(digits_forest_audit):
    result = {
        **digits_forest_audit,
        "model": {**digits_forest_audit["model"], "path": "<script>alert(1)</script>"},
    }
    html = render_privacy_report(result)
    assert html == render_privacy_report(result)
    assert "<script>alert(1)" not in html and "&lt;script&gt;" in html
    assert "<script" not in html.lower() and "<link" not in html.lower()
    assert not re.search(r"""(src|href)=["']?https?:""", html)
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", html))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    assert html.count("<svg") == 3
    assert "FAIL" in html and "Recommendation" in html and "@media print" in html


def test_onnx_model_gets_reference_attacks_from_a_stand_in_family(tmp_path, cancer):
    """An ONNX graph cannot be re-fitted: LiRA and RMIA use reference models of the family
    its graph shows (a linear classifier here), and say so."""
    from skl2onnx import to_onnx

    from audits.models import load_served_model

    train, holdout = cancer
    onx = to_onnx(regularised_logreg(train), train.X[:1].astype(np.float32))
    (tmp_path / "m.onnx").write_bytes(onx.SerializeToString())
    result = run_privacy_audit(
        load_served_model(tmp_path / "m.onnx"),
        train,
        holdout,
        thresholds=Thresholds(max_fidelity=None),
        **FAST,
    )
    assert {"lira_offline", "rmia"} <= set(result["membership"])
    assert result["membership_info"]["reference_family"] == "logistic_regression"
    assert result["membership_info"]["skipped"] == {}
    assert result["membership_auc"] < 0.6 and result["passed"]


# --- RMIA, intervals, classes -------------------------------------------------------------


def test_rmia_score_is_the_pairwise_share_of_dominated_population_rows():
    rng = np.random.default_rng(1)
    target_x, target_z = rng.uniform(0.05, 1, 40), rng.uniform(0.05, 1, 30)
    ref_x, ref_z = rng.uniform(0.05, 1, (3, 40)), rng.uniform(0.05, 1, (3, 30))
    out_x, out_z = rng.random((3, 40)) > 0.3, np.ones((3, 30), bool)
    out_x[0] = True  # every row has an OUT model
    a = 0.4
    scores = membership.rmia_scores(target_x, ref_x, out_x, target_z, ref_z, out_z, a)

    def marginal(p, out):
        return (1 + a) / 2 * np.array([p[o, i].mean() for i, o in enumerate(out.T)]) + (1 - a) / 2

    ratio_x = target_x / marginal(ref_x, out_x)
    ratio_z = target_z / marginal(ref_z, out_z)
    share = (ratio_x[:, None] / ratio_z[None, :] > 1).mean(axis=1)
    np.testing.assert_allclose(np.floor(scores * 30 + 1e-9) / 30, share, atol=1e-12)
    assert (np.argsort(scores) == np.argsort(ratio_x)).all()


def test_one_reference_model_audits_only_non_members_it_left_out(digits):
    """With one reference model (trained on half the holdout) the non-members it trained on
    have no OUT model; they are not audited, so LiRA and RMIA score members and non-members by
    one formula, and RMIA's settings come from attacking the reference with the target."""
    train, holdout = digits
    model = served(leaky_forest(train))
    metrics, info = membership.membership_audit(model, train, holdout, reference_models=1)
    split_of = membership.split_index(
        membership.plan_references(len(holdout), 1, 0)[0], len(holdout)
    )
    left_out = membership.auditable_holdout(split_of, 1)
    assert set(left_out) == set(np.flatnonzero(split_of == 1))
    assert info["non_members"] == info["members"] == len(left_out)
    sample = membership.balanced_sample(train.X, train.y, holdout.X, holdout.y, 0, left_out)
    refs = membership.fit_references(model, sample, holdout.X, holdout.y, n_models=1, seed=0)
    assert refs.sample_out.all()  # every audited row, member or not, has its OUT model
    assert info["rmia_a"] in membership.RMIA_A_GRID
    assert info["rmia_temperature"] in membership.RMIA_TEMPERATURES
    assert metrics["rmia"]["auc"] > 0.9 and metrics["lira_offline"]["auc"] > 0.9
    assert metrics["rmia"]["auc"] > metrics["max_confidence"]["auc"]


@pytest.mark.parametrize("dataset", ["digits", "cancer"])
def test_one_reference_rmia_is_near_chance_on_a_tight_model(request, dataset):
    """A regularised model leaks little: RMIA with one reference model must not read as a
    (below-chance) signal, as it did when the rows the reference trained on were audited."""
    train, holdout = request.getfixturevalue(dataset)
    model = served(regularised_logreg(train))
    metrics, _ = membership.membership_audit(model, train, holdout, reference_models=1)
    for attack in ("rmia", "lira_offline"):
        assert 0.45 < metrics[attack]["auc"] < 0.6


def test_four_reference_models_audit_every_holdout_row(digits):
    train, holdout = digits
    split_of = membership.split_index(
        membership.plan_references(len(holdout), 4, 0)[0], len(holdout)
    )
    assert len(membership.auditable_holdout(split_of, 4)) == len(holdout)
    quarters = [len(rows) for rows in np.array_split(np.arange(len(holdout)), 4)]
    assert np.bincount(split_of).tolist() == quarters  # disjoint quarters of the holdout


def test_rmia_beats_max_confidence_on_leaky_model(digits_forest_audit):
    m = digits_forest_audit["membership"]
    assert m["rmia"]["auc"] > m["max_confidence"]["auc"]
    assert m["rmia"]["tpr_at_1pct_fpr"] > m["max_confidence"]["tpr_at_1pct_fpr"]
    assert 0.0 <= digits_forest_audit["membership_info"]["rmia_a"] <= 1.0


def test_tpr_intervals_are_clopper_pearson(digits_forest_audit):
    from scipy.stats import beta

    n = digits_forest_audit["membership_info"]["members"]
    for row in digits_forest_audit["membership_rows"]:
        tpr, (low, high) = row["tpr_at_10pct_fpr"], row["tpr_at_10pct_fpr_ci"]
        k = round(tpr * n)
        assert low == pytest.approx(0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1))
        assert high == pytest.approx(1.0 if k == n else beta.ppf(0.975, k + 1, n - k))
        assert low <= tpr <= high
    assert digits_forest_audit["membership"]["rmia"]["tpr_at_0_1pct_fpr_ci"] is None


def test_per_class_leakage_covers_every_class(digits_forest_audit):
    rows = digits_forest_audit["membership_by_class"]
    assert [r["class"] for r in rows] == list(range(10))
    assert sum(r["members"] for r in rows) == digits_forest_audit["membership_info"]["members"]
    for row in rows:
        assert row["top_attack"] in digits_forest_audit["membership"]
        assert row["auc"] == max(m["auc"] for m in row["attacks"].values())
        assert 0.5 < row["auc"] <= 1.0  # a forest without bootstrap leaks in every class
