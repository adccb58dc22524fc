"""Claims table from pre-registered hypotheses, p-value display, the paper's reported numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _stats_fixtures import seed_design
from statsmodels.stats.multitest import multipletests

from rrglib.reporting import (
    VERDICTS,
    Hypothesis,
    claims_table,
    clusters_for,
    format_p,
    load_paper_reported,
    paper_beside_ours,
    paper_claims_table,
    paper_results_table,
    seed_table,
    verdict,
)

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "paper_reported.yaml"


def test_format_p_floor_and_values() -> None:
    assert format_p(1 / 5001, 5000) == "< 1/5001"
    assert format_p(2 / 5001, 5000) == "4.00e-04"  # above the floor: the value itself
    assert format_p(0.0123) == "0.012"
    assert format_p(2.5e-5) == "2.50e-05"
    assert format_p(float("nan")) == "n/a"
    assert format_p(1.0, 5000) == "1.000"


def test_verdict_cases() -> None:
    assert verdict(+0.03, 0.01, "greater") == "supported"
    assert verdict(-0.03, 0.01, "less") == "supported"
    assert verdict(-0.03, 0.01, "greater") == "contradicted"
    assert verdict(+0.03, 0.05, "greater") == "not supported at this power"  # not < alpha
    assert verdict(+0.03, 0.2, "greater") == "not supported at this power"
    assert verdict(+0.03, 0.02, "greater", alpha=0.01) == "not supported at this power"


def test_hypothesis_from_spec() -> None:
    h = Hypothesis.from_dict({"name": "H2", "arm_a": "two_stage", "arm_b": "frozen"})
    assert h.metric == "F1-RB-13abn-micro" and h.direction == "greater"
    with pytest.raises(ValueError, match="missing keys"):
        Hypothesis.from_dict({"name": "H2", "arm_a": "two_stage"})
    with pytest.raises(ValueError, match="unknown keys"):
        Hypothesis.from_dict({"name": "H2", "arm_a": "a", "arm_b": "b", "alpha": 0.1})
    with pytest.raises(ValueError, match="direction"):
        Hypothesis("H2", "a", "b", direction="up")


@pytest.fixture(scope="module")
def arms() -> dict:
    rng = np.random.default_rng(5)
    studies = rng.normal(0, 0.05, 60)
    return {name: seed_design(rng, mu, studies, 3, sd_seed=0.01)
            for name, mu in (("good", 0.55), ("bad", 0.45), ("also_bad", 0.45), ("control", 0.45))}


def test_claims_table_verdicts(arms) -> None:
    hyps = [
        Hypothesis("H1", "good", "control", "ROUGE-L", "greater", "the good arm beats the control"),
        {"name": "H2", "arm_a": "bad", "arm_b": "good", "metric": "ROUGE-L", "direction": "greater"},
        Hypothesis("H3", "also_bad", "bad", "ROUGE-L", "greater"),
    ]
    table = claims_table(hyps, arms, n_boot=300)
    assert list(table["hypothesis"]) == ["H1", "H2", "H3"]
    assert list(table["verdict"]) == ["supported", "contradicted", "not supported at this power"]
    assert table["p Holm"].to_numpy() == pytest.approx(multipletests(table["p"], method="holm")[1])
    assert (table["p Holm"] >= table["p"]).all()
    h1 = table.iloc[0]
    assert h1["seeds A"] == 3 and h1["ci low"] < h1["estimate"] < h1["ci high"]
    assert h1["mean A"] - h1["mean B"] == pytest.approx(h1["estimate"])
    # the statement is the whole sentence: verdict, prediction, interval, adjusted p
    assert h1["statement"].startswith("supported: predicted good > control on ROUGE-L")
    assert "Holm-adjusted p" in h1["statement"] and len(h1["statement"]) > 100
    assert "detects with 80% power" in table.iloc[2]["statement"]
    assert h1["bootstrap low"] > 0 and table.iloc[2]["bootstrap low"] < 0 < table.iloc[2]["bootstrap high"]
    assert set(table["verdict"]) <= set(VERDICTS)


def test_holm_within_each_family(arms) -> None:
    primary = [Hypothesis("H1", "good", "control", "ROUGE-L"), Hypothesis("H2", "bad", "good", "ROUGE-L")]
    secondary = [Hypothesis("S1", "also_bad", "bad", "ROUGE-L", family="secondary")]
    table = claims_table(primary + secondary, arms, n_boot=200).set_index("hypothesis")
    alone = claims_table(primary, arms, n_boot=200).set_index("hypothesis")
    # a secondary test neither joins nor changes the primary family's adjustment
    assert table.loc[["H1", "H2"], "p Holm"].to_numpy() == pytest.approx(alone["p Holm"].to_numpy())
    assert table.loc["S1", "p Holm"] == pytest.approx(table.loc["S1", "p"])  # a family of one
    assert table.loc["S1", "family"] == "secondary"


def test_seed_table(arms) -> None:
    table = seed_table({"good": arms["good"], "bad": arms["bad"]}, ["ROUGE-L", "BLEU-4"], n_boot=200)
    assert table.shape[0] == 4 and (table["seeds"] == 3).all()
    row = table[(table["arm"] == "good") & (table["metric"] == "ROUGE-L")].iloc[0]
    scores = [r.point()["ROUGE-L"] for r in arms["good"]]
    assert row["mean"] == pytest.approx(np.mean(scores)) and row["sd"] == pytest.approx(np.std(scores, ddof=1))
    assert row["mean ± sd"] == f"{np.mean(scores):.3f} ± {np.std(scores, ddof=1):.3f}"
    assert row["ci low"] < row["mean"] < row["ci high"]
    assert row["bootstrap low"] < row["mean"] < row["bootstrap high"]
    # the t interval is at least as wide as the seeds alone make it
    half = (row["ci high"] - row["ci low"]) / 2
    assert half >= 4.30 * row["sd"] / np.sqrt(3) - 1e-12  # t(2) 97.5% quantile = 4.303


def test_claims_table_needs_every_arm(arms) -> None:
    with pytest.raises(KeyError, match="two_stage"):
        claims_table([Hypothesis("H2", "two_stage", "good")], arms)


def test_clusters_for() -> None:
    manifest = pd.DataFrame({"id": ["s1", "s2", "s3"], "source_id": ["CXR7", "CXR7", "CXR9"]})
    assert list(clusters_for(["s3", "s1"], manifest)) == ["CXR9", "CXR7"]
    with pytest.raises(KeyError, match="not in the manifest"):
        clusters_for(["s4"], manifest)
    with pytest.raises(KeyError, match="source_id"):
        clusters_for(["s1"], manifest.drop(columns="source_id"))


# --- the paper's numbers ------------------------------------------------------------------------
def test_paper_numbers_on_both_scales() -> None:
    paper = load_paper_reported(PAPER)
    assert paper["scale"]["paper_max"] == 100 and paper["scale"]["ours_max"] == 1
    table = paper_results_table(paper).set_index(["LLM", "strategy", "metric"])
    row = table.loc[("OpenLLaMA-7B", "two_stage", "BLEU-4")]
    assert row["paper (0-100)"] == 6.9 and row["paper on our 0-1 scale"] == pytest.approx(0.069)
    assert table.loc[("OpenLLaMA-7B", "two_stage", "ROUGE-L"), "paper (0-100)"] == 23.5
    assert table.loc[("OpenLLaMA-7B", "two_stage", "F1-CheXbert-14"), "paper (0-100)"] == 32.0
    assert pd.isna(table.loc[("GPT2-S", "frozen", "BLEU-4"), "paper (0-100)"])  # not given: null
    effect = paper["approximate_effects"]["two_stage_clinical_efficacy"]
    assert effect["to_about"] - effect["from_about"] == pytest.approx(2.0)
    beside = paper_beside_ours(paper, {"BLEU-4": 0.05, "F1-RB-14-micro": 0.2}).set_index("paper metric")
    assert beside.loc["F1-CheXbert-14", "our metric"] == "F1-RB-14-micro"
    assert beside.loc["F1-CheXbert-14", "ours (0-1)"] == 0.2
    assert beside.loc["BLEU-4", "paper (0-1)"] == pytest.approx(0.069)


def test_every_paper_claim_has_a_route_to_a_verdict() -> None:
    paper = load_paper_reported(PAPER)
    ids = [c["id"] for c in paper["claims"]]
    assert ids == [f"C{i}" for i in range(1, len(ids) + 1)]
    for c in paper["claims"]:
        routes = [k for k in ("tested_by", "not_testable_here", "implemented_as") if c.get(k)]
        assert len(routes) == 1, c["id"]
    statement = "supported: predicted two_stage > frozen on F1-RB-13abn-micro; observed +0.03"
    claims = pd.DataFrame({"hypothesis": ["H2"], "statement": [statement]})
    verdicts = paper_claims_table(paper, claims).set_index("id")["verdict"]
    assert verdicts["C2"].startswith("H2 supported") and "Scope:" in verdicts["C2"]
    assert verdicts["C3"].startswith("not testable here: one LLM size")
    assert verdicts["C5"].startswith("not tested in this run")  # S1 absent from the claims
    assert verdicts["C6"].startswith("a method, not a result")
    assert paper_claims_table(paper)["verdict"].str.len().min() > 40  # never a bare label


def test_paper_file_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="paper_reported"):
        load_paper_reported(tmp_path / "nope.yaml")
    bad = tmp_path / "paper.yaml"
    bad.write_text("source: {}\nclaims:\n  - {claim: no id}\n")
    with pytest.raises(ValueError, match="missing top-level keys"):
        load_paper_reported(bad)
