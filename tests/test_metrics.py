"""NLG and clinical-efficacy metrics on hand-worked examples; bootstrap and paired tests."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from data_prep.iu_reports import read_iu_xray_reports
from rrglib.labels import CHEXPERT_OBSERVATIONS
from rrglib.metrics import (
    NLG_KEYS,
    PRIMARY_METRIC,
    build_study_stats,
    clinical_efficacy,
    java_available,
    load_evaluate_module,
    nlg_scores,
    paired_test,
    score_reports,
)
from rrglib.metrics.nlg import bleu_from_sums

PAIRS = [
    ("The heart size is normal.", "The heart is normal."),
    ("No pleural effusion or pneumothorax.", "No pneumothorax or pleural effusion."),
    ("Small left pleural effusion.", "Large right pleural effusion."),
    ("Cardiomegaly with pulmonary edema.", "The lungs are clear."),
    ("Pacemaker in place. No acute process.", "Pacemaker in place. No acute process."),
    ("Possible pneumonia in the right lower lobe.", "Right lower lobe pneumonia."),
]
REFS = [r for r, _ in PAIRS]
HYPS = [h for _, h in PAIRS]


def python_backend(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kwargs, backend="python")


# --- NLG ---------------------------------------------------------------------------------------
def _check_first_pair(bleu: np.ndarray, rouge: float) -> None:
    # ref "the heart size is normal" (5 tokens), hyp "the heart is normal" (4 tokens)
    brevity = math.exp(1 - 5 / 4)
    assert bleu[0] == pytest.approx(1.0 * brevity, abs=1e-6)  # 4/4 unigrams match
    assert bleu[1] == pytest.approx(math.sqrt(1.0 * 2 / 3) * brevity, abs=1e-6)  # 2/3 bigrams
    # ROUGE-L: LCS 4, P = 4/4, R = 4/5, beta 1.2
    assert rouge == pytest.approx((1 + 1.44) * 1.0 * 0.8 / (0.8 + 1.44 * 1.0), abs=1e-9)


def test_bleu_rouge_by_hand_python() -> None:
    scores = python_backend(nlg_scores, [PAIRS[0][0]], [PAIRS[0][1]])
    assert list(scores) == list(NLG_KEYS)
    _check_first_pair(np.array([scores[f"BLEU-{n}"] for n in range(1, 5)]), scores["ROUGE-L"])


@pytest.fixture(scope="module")
def java_result():
    """The one Java run of this file (PTB tokenizer + METEOR 1.5 take ~15 s here)."""
    if not java_available():
        pytest.skip("no java")
    stats, scores, _ = build_study_stats(REFS, HYPS, backend="java")
    return stats, scores


def test_bleu_rouge_by_hand_java(java_result) -> None:
    stats, _ = java_result
    first = stats.values[0]
    _check_first_pair(bleu_from_sums(first[:10]), first[stats.columns.index("rouge")])


def test_java_scores(java_result) -> None:
    stats, scores = java_result
    meteor = stats.values[:, stats.columns.index("meteor")]
    assert 0 < scores["METEOR"] < 1 and not np.isnan(meteor).any()
    # the identical pair (index 4) scores perfectly on ROUGE-L and nearly so on METEOR
    assert stats.values[4, stats.columns.index("rouge")] == pytest.approx(1.0)
    assert meteor[4] > 0.9


def test_sufficient_statistics_reproduce_corpus_scores(java_result) -> None:
    stats, scores = java_result
    point = stats.point()
    for key in scores:
        assert point[key] == pytest.approx(scores[key], rel=1e-9, abs=1e-12), key


def test_python_fallback_warns_and_has_no_meteor(monkeypatch) -> None:
    monkeypatch.setenv("RRG_NO_JAVA", "1")
    assert not java_available()
    with pytest.warns(RuntimeWarning, match="METEOR is unavailable"):
        scores = nlg_scores(REFS, HYPS)
    assert math.isnan(scores["METEOR"])
    assert all(0 <= scores[k] <= 1 for k in ("BLEU-1", "BLEU-4", "ROUGE-L"))
    assert scores["CIDEr"] > 0


def test_java_backend_required_but_missing(monkeypatch) -> None:
    monkeypatch.setenv("RRG_NO_JAVA", "1")
    with pytest.raises(RuntimeError, match="java"):
        nlg_scores(REFS, HYPS, backend="java")


# --- clinical efficacy -------------------------------------------------------------------------
def _frame(rows: list[dict[str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(CHEXPERT_OBSERVATIONS), dtype=float)


REF_LABELS = _frame([
    {"Cardiomegaly": 1, "Pleural Effusion": 1},
    {"Pleural Effusion": -1},
    {"No Finding": 1},
    {"Atelectasis": 1},
])  # fmt: skip
GEN_LABELS = _frame([
    {"Cardiomegaly": 1},
    {"Pleural Effusion": 1, "Atelectasis": 1},
    {"No Finding": 1},
    {"Cardiomegaly": -1},
])  # fmt: skip


def test_clinical_efficacy_by_hand() -> None:
    scores, table = clinical_efficacy(REF_LABELS, GEN_LABELS)
    # uncertain = positive. CM tp1 fp1; EF tp1 fn1; AT fp1 fn1; NF tp1 -> TP 3, FP 2, FN 2
    assert scores["P-RB-14-micro"] == pytest.approx(0.6)
    assert scores["R-RB-14-micro"] == pytest.approx(0.6)
    assert scores["F1-RB-14-micro"] == pytest.approx(0.6)
    # per-observation P: CM 1/2, EF 1, AT 0, NF 1, ten others 0 (zero_division=0)
    assert scores["P-RB-14-macro"] == pytest.approx(2.5 / 14)
    assert scores["R-RB-14-macro"] == pytest.approx(2.5 / 14)
    assert scores["F1-RB-14-macro"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 14)
    # 5 observations: CM, EF, AT count -> TP 2, FP 2, FN 2
    assert scores["F1-RB-5-micro"] == pytest.approx(0.5)
    assert scores["P-RB-5-macro"] == pytest.approx((0.5 + 1.0) / 5)
    assert scores["F1-RB-5-macro"] == pytest.approx((2 / 3 + 2 / 3) / 5)
    # uncertain = 0: study 2's reference EF and study 4's generated CM become negative
    # CM tp1; EF fp1 fn1; AT fp1 fn1; NF tp1 -> TP 2, FP 2, FN 2
    assert scores["F1-RB-14-micro-u0"] == pytest.approx(0.5)
    assert scores["P-RB-5-micro-u0"] == pytest.approx(1 / 3)
    # 13 abnormal observations (No Finding left out): CM tp1 fp1; EF tp1 fn1; AT fp1 fn1
    assert scores["F1-RB-13abn-micro"] == pytest.approx(4 / 8)
    assert scores["P-RB-13abn-micro"] == pytest.approx(2 / 4)
    assert scores["F1-RB-13abn-macro"] == pytest.approx((2 / 3 + 2 / 3) / 13)
    # -u0: CM tp1; EF fp1 (study 2) fn1 (study 1); AT fp1 fn1 -> TP 1, FP 2, FN 2
    assert scores["F1-RB-13abn-micro-u0"] == pytest.approx(2 / 6)
    assert table.loc["Cardiomegaly", "precision"] == pytest.approx(0.5)
    assert table.loc["Pleural Effusion", "recall"] == pytest.approx(0.5)
    assert table.loc["Pneumothorax", "f1"] == 0.0
    assert list(table.index) == list(CHEXPERT_OBSERVATIONS)


def test_clinical_metric_names() -> None:
    scores, _ = clinical_efficacy(REF_LABELS, GEN_LABELS)
    expected = {
        f"{m}-RB-{s}-{a}{u}"
        for m in ("P", "R", "F1") for s in ("14", "13abn", "5") for a in ("micro", "macro")
        for u in ("", "-u0")
    }  # fmt: skip
    assert set(scores) == expected
    assert PRIMARY_METRIC in scores


def test_primary_metric_ignores_no_finding() -> None:
    # a constant normal report: right on every normal study, silent on every finding
    reference = _frame([{"No Finding": 1}, {"No Finding": 1}, {"Edema": 1}, {"Fracture": -1}])
    constant = _frame([{"No Finding": 1}] * 4)
    scores, _ = clinical_efficacy(reference, constant)
    assert scores["F1-RB-14-micro"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 2))  # TP 2, FP 2, FN 2
    assert scores[PRIMARY_METRIC] == 0.0 and scores["R-RB-13abn-micro"] == 0.0


# --- bootstrap and paired tests ----------------------------------------------------------------
@pytest.fixture(scope="module")
def iu_texts() -> list[str]:
    reports = read_iu_xray_reports()
    return [t for t in reports["report"] if t][:400]


def test_ci_contains_point_and_narrows(iu_texts) -> None:
    refs, hyps = iu_texts[:200], iu_texts[200:400]
    small = python_backend(score_reports, refs[:50], hyps[:50], n_boot=300)
    large = python_backend(score_reports, refs, hyps, n_boot=300)
    for key in ("BLEU-4", "ROUGE-L", "CIDEr", "F1-RB-14-micro", "P-RB-5-macro"):
        for result in (small, large):
            low, high = result["ci"][key]
            assert low <= result["metrics"][key] + 1e-12 <= high + 2e-12, key
    for key in ("BLEU-1", "ROUGE-L", "F1-RB-14-micro"):
        width = {
            name: r["ci"][key][1] - r["ci"][key][0] for name, r in (("s", small), ("l", large))
        }
        assert width["l"] < width["s"], key


def test_paired_test(iu_texts) -> None:
    refs = iu_texts[:150]
    worse = iu_texts[150:300]
    good, *_ = python_backend(build_study_stats, refs, refs)  # a perfect system
    bad, *_ = python_backend(build_study_stats, refs, worse)
    for method in ("permutation", "bootstrap"):
        for metric in ("BLEU-4", "F1-RB-14-micro", "CIDEr"):
            assert paired_test(good, bad, metric, n_resamples=500, method=method) < 0.01
        assert paired_test(bad, bad, "BLEU-4", n_resamples=500, method=method) > 0.5
    with pytest.raises(KeyError):
        paired_test(good, bad, "F1-CXB-14-micro")


def test_score_reports_structure(iu_texts) -> None:
    result = python_backend(
        score_reports, iu_texts[:20], iu_texts[20:40], ids=list("abcdefghijklmnopqrst"), n_boot=50
    )
    assert set(NLG_KEYS) <= set(result["metrics"]) and set(result["metrics"]) == set(result["ci"])
    assert result["stats"].ids[0] == "a" and result["n"] == 20
    assert list(result["labels"]["reference"].index[:2]) == ["a", "b"]
    assert result["per_observation"].shape[0] == 14


# --- evaluate modules --------------------------------------------------------------------------
def test_evaluate_modules_match_direct_functions(iu_texts) -> None:
    refs, hyps = iu_texts[:30], iu_texts[30:60]
    nlg = load_evaluate_module("rrg_nlg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        via_module = nlg.compute(predictions=hyps, references=refs, backend="python")
        direct = nlg_scores(refs, hyps, backend="python")
    for key in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert via_module[key] == pytest.approx(direct[key])
    clinical = load_evaluate_module("rrg_clinical")
    from rrglib.labeler import label_reports

    direct_ce, _ = clinical_efficacy(label_reports(refs), label_reports(hyps))
    assert clinical.compute(predictions=hyps, references=refs) == pytest.approx(direct_ce)


def test_unknown_evaluate_module() -> None:
    with pytest.raises(FileNotFoundError, match="rrg_nlg"):
        load_evaluate_module("bleu")


def test_ptb_tokenizer_keeps_the_jar_progress_line_off_stderr(capfd):
    from rrglib.metrics.nlg import java_available, tokenize
    if not java_available():
        pytest.skip("needs Java (the PTB tokenizer is a jar)")
    assert tokenize(["The heart is enlarged.", "No effusion"]) == ["the heart is enlarged", "no effusion"]
    assert "PTBTokenizer" not in capfd.readouterr().err  # it printed a red line in every notebook


def test_subprocess_stderr_is_shown_when_the_block_fails(capfd):
    import subprocess
    import sys

    from rrglib.metrics.nlg import subprocess_stderr_held
    with subprocess_stderr_held():
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('progress')"], check=True)
    assert "progress" not in capfd.readouterr().err
    with pytest.raises(subprocess.CalledProcessError), subprocess_stderr_held():
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('why it failed'); sys.exit(3)"],
                       check=True)
    assert "why it failed" in capfd.readouterr().err
