"""Verifying a suspect against a fingerprint: its agreement against the null models of its
family, per stratum, as a Student-t prediction p-value with Bonferroni."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from audits.errors import InputError
from audits.forensics import as_labels
from audits.ownership.fingerprint import rates_by_stratum
from audits.ownership.models import architecture
from audits.ownership.statistic import z_scores, z_upper_p

DEFAULT_ALPHA = 0.01
ALL = "all"  # the whole fingerprint, tested beside each stratum


# ---------------------------------------------------------------- verify


def t_upper_p(value: float, sample: np.ndarray) -> float:
    """P(a new draw >= value) under a Student-t prediction interval from ``sample``."""
    m = len(sample)
    sd = float(np.std(sample, ddof=1)) if m > 1 else 0.0
    return _t_sf(value, float(np.mean(sample)), sd, m, max(m - 1, 1))


def pooled_t_upper_p(value: float, agreement: np.ndarray, families: np.ndarray, family: str):
    """As :func:`t_upper_p` for one more model of ``family``, its mean from that family's null
    models and its spread pooled over all families (each about its own mean): models of one
    family can be near-identical (a logistic regression on overlapping rows), far less varied
    than the same family trained on other data, and the pooled spread has more degrees of
    freedom."""
    names = sorted(set(families.tolist()))
    resid = np.concatenate(
        [agreement[families == f] - agreement[families == f].mean() for f in names]
    )
    df = len(agreement) - len(names)
    if df < 1:
        return t_upper_p(value, agreement[families == family])
    sd = float(np.sqrt((resid**2).sum() / df))
    same = agreement[families == family]
    return _t_sf(value, float(same.mean()), sd, len(same), df)


def stratified_p(
    suspect: dict[str, float], null: dict[str, np.ndarray], families: np.ndarray, family: str
) -> tuple[float, dict[str, float]]:
    """The p-value that one more independent model of ``family`` agrees with the served model
    at least as often as the suspect on some stratum (or on all points): per stratum
    :func:`pooled_t_upper_p`, then Bonferroni over the tests. Returns it and the per-stratum
    p-values."""
    by_stratum = {s: pooled_t_upper_p(v, null[s], families, family) for s, v in suspect.items()}
    return min(1.0, len(by_stratum) * min(by_stratum.values())), by_stratum


def adjusted_upper_p(
    value: float,
    probe_agreement: float,
    agreement: np.ndarray,
    null_probe: np.ndarray,
    families: np.ndarray,
    family: str,
) -> float:
    """As :func:`pooled_t_upper_p`, but the expected agreement of one more model of ``family``
    comes from a regression of the null models' agreement on their agreement with the served
    model on the probe set (unselected candidates), one intercept per family and a common
    slope: an independent model that is simply more faithful everywhere is expected to agree
    more on the fingerprint too, and a copy's excess over that is what the test measures."""
    names = sorted(set(families.tolist()))
    design = np.column_stack([null_probe, *[(families == f).astype(float) for f in names]])
    df = len(agreement) - design.shape[1]
    if df < 1:
        return pooled_t_upper_p(value, agreement, families, family)
    coef, *_ = np.linalg.lstsq(design, agreement, rcond=None)
    sd = float(np.sqrt(((agreement - design @ coef) ** 2).sum() / df))
    expected = float(coef[0] * probe_agreement + coef[1 + names.index(family)])
    return _t_sf(value, expected, sd, len(agreement), df)


def adjusted_stratified_p(
    suspect: dict[str, float],
    probe_agreement: float,
    null: dict[str, np.ndarray],
    null_probe: np.ndarray,
    families: np.ndarray,
    family: str,
) -> tuple[float, dict[str, float]]:
    """:func:`stratified_p` with :func:`adjusted_upper_p` per stratum (Bonferroni)."""
    by_stratum = {
        s: adjusted_upper_p(v, probe_agreement, null[s], null_probe, families, family)
        for s, v in suspect.items()
    }
    return min(1.0, len(by_stratum) * min(by_stratum.values())), by_stratum


def _t_sf(value: float, mean: float, sd: float, m: int, df: int) -> float:
    from scipy.stats import t as student_t

    scale = max(sd, 0.02) * math.sqrt(1.0 + 1.0 / m)  # floor: no zero spread
    return float(student_t.sf((value - mean) / scale, df=df))


def verify(fingerprint: dict, suspect, *, alpha: float = DEFAULT_ALPHA) -> dict:
    """Test ``suspect`` (a :class:`~audits.models.ServedModel`) against the fingerprint."""
    if not 0.0 < alpha < 1.0:
        raise InputError(f"--alpha must be between 0 and 1, got {alpha}")
    width = int(fingerprint["model"]["n_features_in"])
    if suspect.n_features_in != width:
        raise InputError(
            f"suspect {Path(suspect.path).name} takes {suspect.n_features_in} features, "
            f"the fingerprinted model takes {width}"
        )
    points = np.asarray(fingerprint["points"], dtype=np.float64)
    labels = np.asarray(fingerprint["labels"], dtype=str)
    probe = np.asarray(fingerprint["probe"]["points"], dtype=np.float64)
    try:
        said = as_labels(suspect.predict(points))
        said_probe = as_labels(suspect.predict(probe))
    except InputError:
        raise
    except Exception as exc:
        text = " ".join(str(exc).split())[:160]
        raise InputError(f"suspect {suspect.path} failed to predict: {text}") from None
    agree = said == labels
    agreement = float(agree.mean())
    nulls = fingerprint["null"]
    null_agreement = np.array([float(r["agreement"]) for r in nulls])
    similarity = np.array(
        [float((np.asarray(r["probe_labels"], dtype=str) == said_probe).mean()) for r in nulls]
    )
    families = np.array([r["family"] for r in nulls])
    names = sorted(set(families.tolist()))
    family_similarity = {f: float(similarity[families == f].mean()) for f in names}
    strata = np.asarray(fingerprint["strata"], dtype=str)
    suspect_by_stratum = {**rates_by_stratum(agree, strata), ALL: agreement}
    null_by_stratum = {
        s: np.array([float(r["agreement_by_stratum"][s]) for r in nulls])
        for s in suspect_by_stratum
        if s != ALL
    }
    null_by_stratum[ALL] = null_agreement
    probe_labels = np.asarray(fingerprint["probe"]["labels"], dtype=str)
    probe_agreement = float((said_probe == probe_labels).mean())
    null_probe = np.array(
        [float((np.asarray(r["probe_labels"], dtype=str) == probe_labels).mean()) for r in nulls]
    )
    tests = {
        f: adjusted_stratified_p(
            suspect_by_stratum, probe_agreement, null_by_stratum, null_probe, families, f
        )
        for f in names
    }
    null_scores = _null_scores(nulls)
    weights = np.asarray(fingerprint["weights"], dtype=np.float64)
    z_family, df = z_scores(
        weights @ agree.astype(float), probe_agreement, null_scores, null_probe, families
    )
    m = int(np.isfinite(null_scores).sum(axis=1).min())
    p_family = {f: z_upper_p(z, df, m) for f, z in z_family.items()}
    family = architecture(suspect)
    matched_by = "architecture"
    if family not in names:  # unknown: the family least surprised by the score
        family = max(names, key=lambda f: (p_family[f], -names.index(f)))
        matched_by = "most conservative"
    matched = np.flatnonzero(families == family)
    p_matched = p_family[family]
    p_all = t_upper_p(agreement, null_agreement)
    empirical = (1 + int((null_agreement >= agreement).sum())) / (len(nulls) + 1)
    identical = suspect.sha256 == fingerprint["model"]["sha256"]
    copy = identical or p_matched < alpha
    by_region: dict[str, list[int]] = {}
    for region, hit in zip(fingerprint.get("regions", []), agree.tolist(), strict=False):
        by_region.setdefault(region, []).append(int(hit))
    return {
        "suspect": {
            "name": Path(suspect.path).name,
            "kind": suspect.kind,
            "sha256": suspect.sha256,
            "n_features_in": suspect.n_features_in,
            "label_only": suspect.label_only,
        },
        "model": fingerprint["model"],
        "identical_file": identical,
        "points": int(len(points)),
        "agreement": round(agreement, 4),
        "agreement_by_region": {
            r: {"points": len(v), "agreement": round(float(np.mean(v)), 4)}
            for r, v in sorted(by_region.items())
        },
        "p_value": p_matched,
        "p_value_all_null": p_all,
        "p_value_empirical": round(empirical, 4),
        "alpha": alpha,
        "verdict": "copy" if copy else "not shown",
        "matched_family": family,
        "matched_by": matched_by,
        "family_similarity": {f: round(v, 4) for f, v in family_similarity.items()},
        "probe_agreement": round(probe_agreement, 4),
        "p_value_by_family": {f: p_family[f] for f in names},
        "z": round(float(z_family[family]), 4),
        "z_by_family": {f: round(float(z), 4) for f, z in z_family.items()},
        "agreement_by_stratum": {
            s: {
                "points": int(len(strata) if s == ALL else (strata == s).sum()),
                "agreement": round(float(v), 4),
                "matched_mean": round(float(null_by_stratum[s][matched].mean()), 4),
                "p_value": tests[family][1][s],
            }
            for s, v in suspect_by_stratum.items()
        },
        "matched_null": [
            {**_null_row(nulls[i]), "probe_similarity": round(float(similarity[i]), 4)}
            for i in matched
        ],
        "null": [
            {**_null_row(r), "probe_similarity": round(float(s), 4), "matched": bool(i in matched)}
            for i, (r, s) in enumerate(zip(nulls, similarity, strict=True))
        ],
        "copies": fingerprint.get("copies", []),
        "settings": fingerprint.get("settings", {}),
        "region_counts": fingerprint.get("region_counts", {}),
        "null_summary": {
            "mean": round(float(null_agreement.mean()), 4),
            "max": round(float(null_agreement.max()), 4),
            "matched_mean": round(float(null_agreement[matched].mean()), 4),
            "matched_sd": round(float(np.std(null_agreement[matched], ddof=1)), 4)
            if len(matched) > 1
            else 0.0,
        },
    }


def _null_scores(nulls: list[dict]) -> np.ndarray:
    """(weight sets, null models) scores; NaN where a set came from the model's own group."""
    return np.array([[np.nan if v is None else v for v in r["scores"]] for r in nulls]).T


def _null_row(row: dict) -> dict:
    return {"name": row["name"], "family": row["family"], "agreement": row["agreement"]}
