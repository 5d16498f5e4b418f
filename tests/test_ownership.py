"""The ownership check on a simulated archive: fingerprint, copies trained from the logged
attackers are recognised, independent models are not, bad input exits 2, the page escapes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import skops.io as sio

from audits import ownership as own
from audits.evaluation import events_from_archive
from audits.models import load_served_model
from pipelines.cli import main

# small but real: 120 inputs (6 strata x 20) from 6 x 400 sampled and 6 x 40 optimised candidates,
# 6 families x 4 null models in each of 2 groups on disjoint rows
SMALL = [
    *("--n", "120", "--candidates", "400", "--optimised", "40"),
    *("--null-seeds", "4", "--train-rows", "3000", "--quiet"),
]


def table(path: Path) -> tuple[np.ndarray, np.ndarray]:
    frame = pl.read_parquet(path)
    return frame.drop("label").to_numpy().astype(float), frame["label"].to_numpy()


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> dict:
    """A simulated archive, its fingerprint made through the CLI, and suspects on disk."""
    from audits.simulation import simulate

    root = tmp_path_factory.mktemp("ownership")
    sim = root / "sim"
    truth = simulate(sim, seed=7, days=1, users=20)
    fp = root / "fingerprint.json"
    argv = [
        "fingerprint",
        "--model",
        str(sim / "model.skops"),
        "--train",
        str(sim / "train.parquet"),
        "--reference",
        str(sim / "reference.parquet"),
        "--out",
        str(fp),
        *SMALL,
    ]
    assert main(argv) == 0
    return {"root": root, "sim": sim, "truth": truth, "fingerprint": fp}


def verify_cli(archive: dict, suspect: Path, *extra: str) -> int:
    argv = ["verify", "--fingerprint", str(archive["fingerprint"]), "--suspect", str(suspect)]
    return main([*argv, *extra])


def test_fingerprint_file_is_json_with_points_labels_and_null(archive):
    data = json.loads(archive["fingerprint"].read_text())
    assert data["format"] == own.FORMAT
    points = np.asarray(data["points"])
    assert points.shape == (120, 12) and np.isfinite(points).all()
    served = load_served_model(archive["sim"] / "model.skops")
    assert data["model"]["sha256"] == served.sha256
    # the stored labels are the served model's answers, and none sits on the boundary
    assert own.as_labels(served.predict(points)).tolist() == data["labels"]
    assert (own.served_margin(served, points) >= own.MIN_MARGIN).all()
    assert len(data["null"]) == 4 * own.NULL_GROUPS * len(own.NULL_FAMILIES)
    assert sum(data["region_counts"].values()) == 120
    assert "optimised" in data["region_counts"]
    # selected where copies agree and independent models do not (the null shares no training
    # rows with the selection models, so the selection does not widen this gap in its favour)
    # with the held-out copies of each stratum's query strategy, on that stratum
    gaps = []
    for q in own.QUERY_SOURCES:
        copies = [r for r in data["copies"] if r["name"].endswith(f"on {q} queries")]
        copy_mean = np.mean([r["agreement_by_stratum"][q] for r in copies])
        null_mean = np.mean([r["agreement_by_stratum"][q] for r in data["null"]])
        gaps.append(copy_mean - null_mean)
    # (at these small sizes the jittered stratum, next to natural rows, can fall level with
    # the k-NN null models)
    assert sum(g > 0 for g in gaps) >= len(gaps) - 1 and np.mean(gaps) > 0.15, gaps


def test_served_model_itself_is_a_copy(archive, capsys):
    assert verify_cli(archive, archive["sim"] / "model.skops") == 0
    out = capsys.readouterr().out
    assert "agreement: 1.0000" in out and "verdict: copy" in out


def test_attacker_copies_are_recognised_and_independent_models_are_not(archive, capsys):
    """Copies trained on logged attacker traffic (skops and ONNX) vs models trained on the
    ground truth the served model never saw."""
    sim, root = archive["sim"], archive["root"]
    truth = archive["truth"]
    events = events_from_archive(sim / "logs")
    attackers = [u["user_id"] for u in truth["users"] if u["role"] == "attacker"]
    union = events.filter(pl.col("user_id").is_in(attackers))  # every attacker's answers
    copy = own.train_copy(union, "logistic_regression", width=12, seed=0)
    boosted = own.train_copy(union, "gradient_boosting", width=12, seed=0)
    mlp = own.train_copy(union, "mlp", width=12, seed=0)
    assert copy is not None and boosted is not None and mlp is not None
    sio.dump(copy, root / "copy.skops")
    sio.dump(boosted, root / "boosted.skops")
    sio.dump(mlp, root / "mlp.skops")
    onnx_path = root / "copy.onnx"
    to_onnx(copy, onnx_path)
    hold_X, hold_y = table(sim / "holdout.parquet")
    independent = own.fit_quietly(own.make_model("logistic_regression", 5), hold_X, hold_y)
    sio.dump(independent, root / "independent.skops")

    fingerprint = own.load_fingerprint(archive["fingerprint"])
    expected = {
        "copy.skops": "logistic_regression",
        "copy.onnx": "logistic_regression",
        "boosted.skops": "gradient_boosting",
        "mlp.skops": "mlp",
    }
    for name, family in expected.items():
        result = own.verify(fingerprint, load_served_model(root / name), alpha=0.01)
        assert result["verdict"] == "copy", (name, result["agreement"], result["p_value"])
        assert (result["matched_family"], result["matched_by"]) == (family, "architecture")
    result = own.verify(fingerprint, load_served_model(root / "independent.skops"), alpha=0.01)
    assert result["verdict"] == "not shown", (result["agreement"], result["p_value"])
    assert result["matched_family"] == "logistic_regression"
    assert verify_cli(archive, root / "independent.skops") == 0  # completed check: exit 0
    assert "verdict: not shown" in capsys.readouterr().out


def to_onnx(model, path: Path) -> None:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    proto = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, 12]))],
        options={id(model): {"zipmap": False}},
        target_opset=17,
    )
    path.write_bytes(proto.SerializeToString())


def test_architecture_is_read_from_the_file_else_the_most_conservative_family(archive, tmp_path):
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 12)), np.arange(200) % 4
    served = load_served_model(archive["sim"] / "model.skops")
    assert own.architecture(served) == "mlp_deep"  # the simulator serves an MLP (32, 32)
    deep = own.fit_quietly(own.make_model("mlp_deep", 0), X, y)
    to_onnx(deep, tmp_path / "deep.onnx")
    assert own.architecture(load_served_model(tmp_path / "deep.onnx")) == "mlp_deep"
    forest = own.fit_quietly(own.make_model("random_forest", 0), X, y)
    sio.dump(forest, tmp_path / "forest.skops")
    assert own.architecture(load_served_model(tmp_path / "forest.skops")) == "random_forest"
    sio.dump(KNeighborsClassifier().fit(X, y), tmp_path / "knn.skops")
    assert own.architecture(load_served_model(tmp_path / "knn.skops")) == "knn"
    fingerprint = own.load_fingerprint(archive["fingerprint"])
    sio.dump(SVC().fit(X, y), tmp_path / "svc.skops")
    suspect = load_served_model(tmp_path / "svc.skops")
    assert own.architecture(suspect) is None
    result = own.verify(fingerprint, suspect)
    assert result["matched_by"] == "most conservative"
    assert result["p_value"] == max(result["p_value_by_family"].values())


def test_pooled_p_value_uses_each_family_mean_and_the_pooled_spread():
    agreement = np.array([0.20, 0.22, 0.24, 0.50, 0.55, 0.60])
    families = np.array(["a", "a", "a", "b", "b", "b"])
    p_a = own.pooled_t_upper_p(0.22, agreement, families, "a")
    assert p_a == pytest.approx(0.5)  # at the family's own mean, whatever the other family
    assert own.pooled_t_upper_p(0.50, agreement, families, "a") < 0.01
    assert own.pooled_t_upper_p(0.50, agreement, families, "b") > 0.5
    # a's mean, the spread of both families about their own means, 6 - 2 degrees of freedom
    from scipy.stats import t as student_t

    sd = np.sqrt((2 * 0.02**2 + 2 * 0.05**2) / 4)
    expected = student_t.sf((0.40 - 0.22) / (sd * np.sqrt(1 + 1 / 3)), df=4)
    assert own.pooled_t_upper_p(0.40, agreement, families, "a") == pytest.approx(expected)
    assert own.t_upper_p(0.22, agreement[:3]) == pytest.approx(0.5)


def test_adjusted_p_value_expects_more_agreement_from_a_more_faithful_model():
    rng = np.random.default_rng(3)
    families = np.repeat(np.array(["a", "b"]), 8)
    probe = rng.uniform(0.6, 0.8, 16)
    agreement = 0.1 + 0.5 * probe + np.where(families == "b", 0.2, 0.0)
    agreement = agreement + rng.normal(0, 0.01, 16)
    # on the family's regression line: p = 1/2; the same agreement from a less faithful model
    # (lower probe agreement) is surprising, from a more faithful one it is not
    on_line = 0.1 + 0.5 * 0.7
    assert own.adjusted_upper_p(on_line, 0.7, agreement, probe, families, "a") == pytest.approx(
        0.5, abs=0.1
    )
    assert own.adjusted_upper_p(on_line, 0.5, agreement, probe, families, "a") < 0.01
    assert own.adjusted_upper_p(on_line, 0.9, agreement, probe, families, "a") > 0.9
    # family b's intercept is 0.2 higher: the same agreement is unremarkable for a but low for b
    assert own.adjusted_upper_p(on_line, 0.7, agreement, probe, families, "b") > 0.99
    suspect = {"natural": on_line, "uniform": on_line}
    null = {"natural": agreement, "uniform": agreement}
    p, by_stratum = own.adjusted_stratified_p(suspect, 0.5, null, probe, families, "a")
    assert p == pytest.approx(min(1.0, 2 * min(by_stratum.values())))


def test_stratified_p_value_is_bonferroni_over_the_strata():
    families = np.array(["a", "a", "a", "b", "b", "b"])
    null = {
        "natural": np.array([0.20, 0.22, 0.24, 0.50, 0.55, 0.60]),
        "uniform": np.array([0.10, 0.20, 0.30, 0.10, 0.40, 0.70]),
    }
    p, by_stratum = own.stratified_p({"natural": 0.22, "uniform": 0.20}, null, families, "a")
    assert by_stratum == pytest.approx({"natural": 0.5, "uniform": 0.5}) and p == 1.0
    # one stratum far above family a's null: its p-value times the number of strata
    suspect = {"natural": 0.40, "uniform": 0.20}
    p, by_stratum = own.stratified_p(suspect, null, families, "a")
    expected = own.pooled_t_upper_p(0.40, null["natural"], families, "a")
    assert by_stratum["natural"] == pytest.approx(expected) and p == pytest.approx(2 * expected)
    assert own.stratified_p(suspect, null, families, "b")[0] == 1.0  # b's mean is higher


def test_selection_and_null_models_train_on_disjoint_halves_with_every_label():
    labels = np.repeat(np.array(["0", "1", "2"]), [50, 31, 7])
    first, second = own.split_halves(labels, np.random.default_rng(0))
    assert len(np.intersect1d(first, second)) == 0
    assert np.array_equal(np.sort(np.concatenate([first, second])), np.arange(len(labels)))
    for label in ("0", "1", "2"):  # each label split evenly
        assert abs((labels[first] == label).sum() - (labels[second] == label).sum()) <= 1
    assert own.rows_per_model(8000, 8000) == 6000 and own.rows_per_model(3000, 8000) == 3000


def test_fingerprint_strata_cover_every_query_strategy(archive):
    data = json.loads(archive["fingerprint"].read_text())
    strata = data["strata"]
    assert len(strata) == len(data["points"])
    assert {s: strata.count(s) for s in set(strata)} == {q: 20 for q in own.QUERY_SOURCES}
    assert len({tuple(p) for p in data["points"]}) == len(data["points"])  # no input twice
    for row in data["null"]:
        assert set(row["agreement_by_stratum"]) == set(own.QUERY_SOURCES)
        mean = np.mean(list(row["agreement_by_stratum"].values()))
        assert row["agreement"] == pytest.approx(mean, abs=1e-3)  # equal strata: the mean


def test_optimised_candidates_stay_near_their_starts_and_raise_conferrability(archive):
    """Gradient ascent against the two torch ensembles: every point stays within RADIUS
    standard deviations of its start (and the reference box), and the ensembles'
    conferrability of the served label rises on average."""
    import torch

    from audits.ownership import optimise as opt

    sim = archive["sim"]
    served = load_served_model(sim / "model.skops")
    ref = pl.read_parquet(sim / "reference.parquet").to_numpy().astype(float)
    train_X, train_y = table(sim / "train.parquet")
    mean, sd = ref.mean(axis=0), ref.std(axis=0)
    classes = own.as_labels(served.classes_).tolist()
    said = np.array([classes.index(v) for v in own.as_labels(served.predict(ref[:600]))])
    true = np.array([classes.index(v) for v in own.as_labels(train_y[:1500])])
    surrogates = opt.train_nets((ref[:600] - mean) / sd, said, len(classes), [1])
    references = opt.train_nets((train_X[:1500] - mean) / sd, true, len(classes), [2])
    starts = (ref[600:700] - mean) / sd
    box = ((ref.min(axis=0) - mean) / sd, (ref.max(axis=0) - mean) / sd)
    target = np.array([classes.index(v) for v in own.as_labels(served.predict(ref[600:700]))])
    moved = opt.ascend(surrogates, references, starts, target, box)
    assert np.abs(moved - starts).max() <= opt.RADIUS + 1e-5
    assert (moved >= box[0] - 1e-5).all() and (moved <= box[1] + 1e-5).all()

    def sigma(Z):
        x, t = torch.as_tensor(Z, dtype=torch.float32), torch.as_tensor(target)
        with torch.no_grad():
            copy = opt.mean_target_proba(surrogates, x, t)
            independent = opt.mean_target_proba(references, x, t)
        return (copy * (1 - independent)).numpy()

    assert sigma(moved).mean() > sigma(starts).mean() + 0.05


def test_verify_writes_json_and_an_escaped_page(archive):
    hostile = archive["root"] / "<img src=x onerror=alert(1)>.skops"
    shutil.copy(archive["sim"] / "model.skops", hostile)
    out = archive["root"] / "report"
    assert verify_cli(archive, hostile, "--out", str(out)) == 0
    result = json.loads((out / "verify.json").read_text())
    assert result["verdict"] == "copy" and result["identical_file"] is True
    page = (out / "verify.html").read_text()
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;.skops" in page
    assert "<svg" in page and "copy" in page


def test_bad_input_exits_2_with_one_line(archive, capsys, tmp_path):
    from sklearn.linear_model import LogisticRegression

    narrow = tmp_path / "narrow.skops"
    rng = np.random.default_rng(0)
    sio.dump(LogisticRegression().fit(rng.normal(size=(50, 5)), np.arange(50) % 2), narrow)
    assert verify_cli(archive, narrow) == 2
    assert "takes 5 features" in capsys.readouterr().err

    corrupt = tmp_path / "fingerprint.json"
    corrupt.write_text(archive["fingerprint"].read_text()[:5000])
    assert main(["verify", "--fingerprint", str(corrupt), "--suspect", str(narrow)]) == 2
    data = json.loads(archive["fingerprint"].read_text())
    data["points"][0] = data["points"][0][:-1]
    corrupt.write_text(json.dumps(data))
    assert main(["verify", "--fingerprint", str(corrupt), "--suspect", str(narrow)]) == 2
    assert verify_cli(archive, tmp_path / "missing.skops") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("stealwatch: error:") for line in err)
    assert "corrupt fingerprint" in err[0] and "corrupt fingerprint" in err[1]

    data = json.loads(archive["fingerprint"].read_text())
    data["version"] = 1
    corrupt.write_text(json.dumps(data))
    assert main(["verify", "--fingerprint", str(corrupt), "--suspect", str(narrow)]) == 2
    assert "make it again with `stealwatch fingerprint`" in capsys.readouterr().err

    sim = archive["sim"]
    argv = ["fingerprint", "--model", str(sim / "model.skops"), "--out", str(tmp_path / "f.json")]
    assert main([*argv, "--train", str(sim / "reference.parquet"), *SMALL]) == 2
    assert "no label column" in capsys.readouterr().err


def test_llr_weights_are_signed_and_each_set_scores_only_the_other_groups():
    from audits.ownership.statistic import llr_weights, weight_sets

    copies = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 0]], dtype=bool)
    null = np.array([[0, 1, 1], [0, 1, 1], [1, 1, 1], [0, 1, 1]], dtype=bool)
    w = llr_weights(copies, null)
    # copies agree, the null does not: positive; both agree: near 0; only the null: negative
    assert w[0] > 1 and abs(w[1]) < w[0] and w[2] < -1
    groups = np.array([0, 0, 1, 1])
    weights, scores = weight_sets(copies, null, groups)
    assert weights.shape == (2, 3) and scores.shape == (2, 4)
    assert np.isnan(scores[0, :2]).all() and np.isnan(scores[1, 2:]).all()
    assert scores[0, 2] == pytest.approx(null[2] @ llr_weights(copies, null[:2]))


@pytest.mark.parametrize("seed", [21, 22])
def test_copy_is_called_and_independent_models_of_each_family_are_not(tmp_path, seed):
    """At the default alpha 0.01 on generated archives: a copy trained on the served model's
    answers to uniform queries (as extraction attackers send) is called; a model of each null
    family trained on holdout rows (which the served model never saw) is not."""
    from audits.simulation import simulate

    sim = tmp_path / "sim"
    simulate(sim, seed=seed, days=1, users=20)
    served = load_served_model(sim / "model.skops")
    train_X, train_y = table(sim / "train.parquet")
    hold_X, hold_y = table(sim / "holdout.parquet")
    sizes = {"n": 600, "per_region": 300, "null_seeds": 6, "optimised": 0}
    fingerprint = own.make_fingerprint(
        served, train_X, train_y, **sizes, independent_rows=3000, seed=seed
    )
    rng = np.random.default_rng(seed)
    queries = rng.uniform(train_X.min(axis=0), train_X.max(axis=0), size=(2000, 12))
    answers = own.as_labels(served.predict(queries))
    copy = own.fit_quietly(own.make_model("logistic_regression", seed), queries, answers)
    sio.dump(copy, tmp_path / "copy.skops")
    result = own.verify(fingerprint, load_served_model(tmp_path / "copy.skops"))
    assert result["verdict"] == "copy", (result["z"], result["p_value"])
    for family in own.NULL_FAMILIES:
        model = own.fit_quietly(own.make_model(family, seed), hold_X[:3000], hold_y[:3000])
        sio.dump(model, tmp_path / f"{family}.skops")
        result = own.verify(fingerprint, load_served_model(tmp_path / f"{family}.skops"))
        assert result["verdict"] == "not shown", (family, result["z"], result["p_value"])
