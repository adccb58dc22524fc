"""Reading a study's results back: training logs, evaluation files, the summary table, figures,
the pre-registered claims table and the paper's reported numbers. Nothing here trains or generates.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml

from .metrics import PRIMARY_METRIC, StudyStats, paired_test
from .metrics.seeds import compare_arms, holm, summarize_arm

# The primary metric first among the clinical ones; F1-RB-14 and F1-RB-5 are secondary.
HEADLINE = ["BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", PRIMARY_METRIC, "P-RB-13abn-micro",
            "R-RB-13abn-micro", "F1-RB-14-micro", "F1-RB-14-macro", "F1-RB-5-micro"]


def read_log(run_work_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """metrics.jsonl of a training run -> (per-step frame, per-epoch frame)."""
    path = Path(run_work_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: has the run been trained (20_train)?")
    frame = pd.DataFrame([json.loads(s) for s in path.read_text().splitlines() if s.strip()])
    return tuple(frame[frame["kind"] == kind].dropna(axis=1, how="all").reset_index(drop=True)
                 for kind in ("step", "epoch"))


def plot_training(steps: pd.DataFrame, epochs: pd.DataFrame, title: str = "") -> plt.Figure:
    """Training loss by step (stage marked) and validation loss with true vs shuffled images."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for stage, part in steps.groupby("stage"):
        axes[0].plot(part["step"], part["loss"], ".-", ms=3, label=f"stage {stage}")
    axes[0].set(xlabel="optimizer step", ylabel="training loss", title="training")
    axes[1].plot(epochs["epoch"], epochs["val_loss"], "o-", label="true images")
    axes[1].plot(epochs["epoch"], epochs["val_loss_shuffled"], "s--", label="shuffled images")
    axes[1].set(xlabel="epoch", ylabel="validation LM loss", title="validation")
    for ax in axes:
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def load_eval(eval_dir: str | Path) -> dict[str, Any]:
    """metrics.json + generations.csv of one evaluation folder."""
    eval_dir = Path(eval_dir)
    if not (eval_dir / "metrics.json").is_file():
        raise FileNotFoundError(f"{eval_dir / 'metrics.json'} not found: run 30_evaluate first")
    payload = json.loads((eval_dir / "metrics.json").read_text())
    payload["generations"] = pd.read_csv(eval_dir / "generations.csv", keep_default_na=False,
                                         dtype={"id": str})
    payload["eval_dir"] = str(eval_dir)
    return payload


def systems_table(evals: dict[str, dict[str, Any]], metrics: list[str] = HEADLINE) -> pd.DataFrame:
    """Systems x metrics, each metric with a "<metric> CI" column: its 95% interval as text."""
    rows = {}
    for name, payload in evals.items():
        row = rows[name] = {}
        for m in metrics:
            lo, hi = payload.get("ci95", {}).get(m, (float("nan"), float("nan")))
            row[m], row[f"{m} CI"] = payload["metrics"].get(m), f"[{lo:.3f}, {hi:.3f}]"
    return pd.DataFrame.from_dict(rows, orient="index")


def stats_of(payload: dict[str, Any]) -> StudyStats:
    """Per-study statistics an evaluation saved (study_stats.csv), for paired tests."""
    path = Path(payload["eval_dir"]) / "study_stats.csv"
    table = pd.read_csv(path, index_col="id", dtype={"id": str})
    return StudyStats(list(table.index), list(table.columns), table.to_numpy(dtype=float),
                      payload.get("meteor_scale", 1.0), payload.get("labeler", "RB"))


def clusters_for(ids: Sequence[Any], manifest: pd.DataFrame,
                 column: str = "source_id") -> np.ndarray:
    """One cluster id per study: the manifest's `column` (e.g. the IU report of a demo case)."""
    if column not in manifest.columns:
        raise KeyError(f"manifest has no {column!r} column (columns: {list(manifest.columns)}); "
                       "rebuild the data with a builder that records it, or pass clusters=None")
    table = manifest.assign(id=manifest["id"].astype(str)).set_index("id")[column]
    ids = [str(i) for i in ids]
    missing = [i for i in ids if i not in table.index]
    if missing:
        raise KeyError(f"{len(missing)} study ids are not in the manifest, e.g. {missing[:3]}: "
                       "was the evaluation run on this data?")
    return table.loc[ids].to_numpy()


def paired_table(stats: dict[str, StudyStats], reference: str, metrics: list[str],
                 n_resamples: int = 5000, clusters: Any = None) -> pd.DataFrame:
    """Paired permutation p-values of every system against `reference` on the same studies."""
    ref, rows = stats[reference], {}
    for name, s in stats.items():
        if name != reference:
            rows[name] = {f"p({m})": paired_test(s, ref, m, n_resamples, clusters=clusters)
                          for m in metrics}
            rows[name].update({f"Δ{m}": s.point()[m] - ref.point()[m] for m in metrics})
    return pd.DataFrame.from_dict(rows, orient="index")


def side_by_side(gens: dict[str, pd.DataFrame], ids: list[str]) -> pd.DataFrame:
    """Reference and every system's report for the given study ids."""
    first = next(iter(gens.values())).set_index("id")
    table = pd.DataFrame({"reference": first.loc[ids, "reference"]})
    for name, g in gens.items():
        table[name] = g.set_index("id").loc[ids, "generated"]
    return table


def _markdown(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A GitHub markdown table (pandas' to_markdown would need tabulate)."""
    def cell(v: Any) -> str:
        return ("" if pd.isna(v) else format(v, floatfmt)) if isinstance(v, float) else str(v)

    head = [str(frame.index.name or "")] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([str(i)] + [cell(v) for v in row]) + " |"
              for i, row in frame.iterrows()]
    return "\n".join(lines)


def write_index(study_dir: str | Path, runs: list[str], sections: dict[str, pd.DataFrame],
                notes: str = "") -> Path:
    """results/<study>/README.md: links to every rendered notebook and figure, and the tables."""
    study_dir = Path(study_dir)
    lines = [f"# Study `{study_dir.name}`", "", notes, "", "## Rendered notebooks", ""]
    lines += [f"- [{p.stem}]({p.name})" for p in sorted(study_dir.glob("*.html"))]
    for run in runs:
        links, figs = (", ".join(f"[{p.stem}]({run}/{p.name})" for p in sorted(study_dir.glob(g)))
                       for g in (f"{run}/*.html", f"{run}/*.png"))
        lines.append(f"- **{run}**: {links}" + (f" — figures: {figs}" if figs else ""))
    for title, frame in sections.items():
        lines += ["", f"## {title}", "", _markdown(frame)]
    path = study_dir / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# --- seeds: the unit of replication ------------------------------------------------------------
def seed_table(runs: Mapping[str, Sequence[StudyStats]], metrics: Sequence[str],
               n_boot: int = 2000, clusters: Any = None, level: float = 0.95) -> pd.DataFrame:
    """Arm x metric: seeds, mean, sd, "mean ± sd", intervals over seed and test-set variance."""
    rows = []
    for arm, arm_runs in runs.items():
        for m in metrics:
            s = summarize_arm(arm_runs, m, n_boot, clusters=clusters, level=level)
            rows.append({"arm": arm, "metric": m, "seeds": len(s.scores), "mean": s.mean,
                         "sd": s.sd, "mean ± sd": f"{s.mean:.3f} ± {s.sd:.3f}", "ci low": s.ci[0],
                         "ci high": s.ci[1], "bootstrap low": s.ci_bootstrap[0],
                         "bootstrap high": s.ci_bootstrap[1]})
    return pd.DataFrame(rows)


# --- p-values, pre-registered hypotheses and the claims table -----------------------------------
def format_p(p: float, n_resamples: int | None = None) -> str:
    """A p-value for a table; at a resampling test's floor 1/(n+1) it reads "< 1/(n+1)"."""
    if p is None or not np.isfinite(p):
        return "n/a"
    if n_resamples is not None and p <= 1.0 / (n_resamples + 1) + 1e-15:
        return f"< 1/{n_resamples + 1}"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


DIRECTIONS = {"greater": "A > B", "less": "A < B"}
VERDICTS = ("supported", "contradicted", "not supported at this power")


@dataclass(frozen=True)
class Hypothesis:
    """A pre-registered test: arm A against arm B on `metric`, predicting the sign of A - B."""

    name: str
    arm_a: str
    arm_b: str
    metric: str = PRIMARY_METRIC
    direction: str = "greater"  # "greater": A > B predicted; "less": A < B
    text: str = ""
    family: str = "primary"  # Holm adjusts within a family; e.g. "secondary" apart

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"hypothesis {self.name}: direction must be one of "
                             f"{sorted(DIRECTIONS)}, got {self.direction!r}")

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> Hypothesis:
        """From a study spec entry {name, arm_a, arm_b, metric?, direction?, text?, family?}."""
        missing = [k for k in ("name", "arm_a", "arm_b") if k not in spec]
        unknown = sorted(set(spec) - {f.name for f in fields(cls)})
        if missing or unknown:
            raise ValueError(f"hypothesis {dict(spec)}: missing keys {missing}, unknown keys "
                             f"{unknown}; expected name, arm_a, arm_b and optional metric, "
                             "direction, text, family")
        return cls(**spec)


def verdict(estimate: float, p_adjusted: float, direction: str, alpha: float = 0.05) -> str:
    """One of VERDICTS: supported (Holm-adjusted p < alpha, predicted sign), contradicted
    (significant, opposite sign), otherwise not supported at this power."""
    if not p_adjusted < alpha:
        return VERDICTS[2]
    predicted = estimate > 0 if direction == "greater" else estimate < 0
    return VERDICTS[0] if predicted else VERDICTS[1]


def _statement(h: Hypothesis, row: Mapping[str, Any], alpha: float, level: float) -> str:
    sign = ">" if h.direction == "greater" else "<"
    text = (f"{row['verdict']}: predicted {h.arm_a} {sign} {h.arm_b} on "
            f"{h.metric}; observed {row['estimate']:+.4f} (mean over {row['seeds A']} vs "
            f"{row['seeds B']} seeds; unadjusted {level:.0%} interval over seeds and test set "
            f"[{row['ci low']:+.4f}, {row['ci high']:+.4f}]), Holm-adjusted p = "
            f"{format_p(row['p Holm'])} {'<' if row['p Holm'] < alpha else '>='} {alpha}")
    if row["verdict"] == VERDICTS[2]:
        text += (f"; the smallest difference this design detects with 80% power is "
                 f"{row['detectable at 80%']:.4f}")
    return text


def claims_table(hypotheses: Sequence[Hypothesis | Mapping[str, Any]],
                 runs: Mapping[str, Sequence[StudyStats]], alpha: float = 0.05,
                 clusters: Any = None, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> pd.DataFrame:
    """One row per pre-registered hypothesis: estimate, interval, raw and Holm p, verdict.

    `runs`: {arm: per-seed StudyStats on the same test studies}; `clusters`: one source id per
    study. Holm adjusts within each `family`. "ci" is the seed-level test's t interval
    (rrglib.metrics.seeds says why not the bootstrap one, kept as "bootstrap"); the power column
    is at alpha / m (m the family's size), Holm's strictest step. `statement` is the full sentence.
    """
    hyps = [h if isinstance(h, Hypothesis) else Hypothesis.from_dict(h) for h in hypotheses]
    absent = sorted({a for h in hyps for a in (h.arm_a, h.arm_b)} - set(runs))
    if absent:
        raise KeyError(f"arms {absent} have no runs (arms with runs: {sorted(runs)}); the "
                       "pre-registered family needs every arm it names")
    size = {f: sum(h.family == f for h in hyps) for f in {h.family for h in hyps}}
    rows = []
    for h in hyps:
        c = compare_arms(runs[h.arm_a], runs[h.arm_b], h.metric, n_boot, seed, clusters, level,
                         power_alpha=alpha / size[h.family])
        rows.append({"hypothesis": h.name, "family": h.family, "text": h.text, "A": h.arm_a,
                     "B": h.arm_b, "metric": h.metric, "predicted": DIRECTIONS[h.direction],
                     "seeds A": len(c.scores_a), "seeds B": len(c.scores_b),
                     "mean A": c.scores_a.mean(), "sd A": c.scores_a.std(ddof=1),
                     "mean B": c.scores_b.mean(), "sd B": c.scores_b.std(ddof=1),
                     "estimate": c.estimate, "ci low": c.ci[0], "ci high": c.ci[1],
                     "bootstrap low": c.ci_bootstrap[0], "bootstrap high": c.ci_bootstrap[1],
                     "sd test set": c.sd_test, "t": c.test.t, "df": c.test.df, "p": c.p,
                     "detectable at 80%": c.mde})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    for family in size:
        members = table["family"] == family
        table.loc[members, "p Holm"] = holm(table.loc[members, "p"].to_numpy(), alpha)
    table["verdict"] = [verdict(r["estimate"], r["p Holm"], h.direction, alpha)
                        for h, (_, r) in zip(hyps, table.iterrows(), strict=True)]
    table["statement"] = [_statement(h, r, alpha, level)
                          for h, (_, r) in zip(hyps, table.iterrows(), strict=True)]
    return table


# --- the paper's reported numbers and claims (configs/paper_reported.yaml) ----------------------
def load_paper_reported(path: str | Path = "configs/paper_reported.yaml") -> dict[str, Any]:
    """The paper's facts: source, scale (its 0-100), setup, results[llm][strategy], claims."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the paper's numbers live in "
                                "configs/paper_reported.yaml")
    paper = yaml.safe_load(path.read_text()) or {}
    missing = [k for k in ("source", "scale", "setup", "results", "claims") if k not in paper]
    bad = [c for c in paper.get("claims") or [] if not {"id", "claim"} <= set(c)]
    if missing or bad:
        raise ValueError(f"{path}: missing top-level keys {missing}; no id/claim: {bad}")
    return paper


def paper_results_table(paper: Mapping[str, Any]) -> pd.DataFrame:
    """Long table LLM, strategy, metric, paper value (0-100), on our 0-1 scale; null = not given."""
    divisor = float(paper["scale"]["paper_max"]) / float(paper["scale"]["ours_max"])
    return pd.DataFrame([
        {"LLM": llm, "strategy": strategy, "metric": metric, "paper (0-100)": value,
         "paper on our 0-1 scale": None if value is None else value / divisor}
        for llm, strategies in paper["results"].items() if isinstance(strategies, dict)
        for strategy, values in strategies.items() if isinstance(values, dict)
        for metric, value in values.items()])


def paper_beside_ours(paper: Mapping[str, Any], ours: Mapping[str, float],
                      llm: str = "OpenLLaMA-7B", strategy: str = "two_stage") -> pd.DataFrame:
    """The paper's numbers (one LLM, one strategy) beside ours, both on the 0-1 scale.

    Paper metrics map to ours via `comparable_metrics` in the YAML (e.g. F1-CheXbert-14 ->
    F1-RB-14-micro: another labeler, so not the same number).
    """
    table = paper_results_table(paper)
    rows = []
    for _, r in table[(table["LLM"] == llm) & (table["strategy"] == strategy)].iterrows():
        match = paper.get("comparable_metrics", {}).get(r["metric"], {})
        name = match.get("ours")
        rows.append({"paper metric": r["metric"], "paper (0-1)": r["paper on our 0-1 scale"],
                     "our metric": name, "ours (0-1)": ours.get(name) if name else None,
                     "note": match.get("note", "")})
    return pd.DataFrame(rows)


def paper_claims_table(paper: Mapping[str, Any],
                       claims: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every claim of the paper with an untruncated verdict from our pre-registered tests.

    A claim's `tested_by` names hypotheses of `claims` (claims_table output): their statements
    are its verdict, with the claim's `scope` note; otherwise its `not_testable_here` reason.
    """
    rows = []
    for c in paper["claims"]:
        tested_by = list(c.get("tested_by") or [])
        found = claims[claims["hypothesis"].isin(tested_by)] if claims is not None else None
        if c.get("implemented_as"):
            text = f"a method, not a result to test: {c['implemented_as']}"
        elif found is not None and len(found):
            text = "; ".join(f"{r['hypothesis']} {r['statement']}" for _, r in found.iterrows())
            text += f". Scope: {c['scope']}" if c.get("scope") else ""
        elif tested_by:
            text = f"not tested in this run: hypotheses {tested_by} are not in the claims table"
        else:
            text = f"not testable here: {c.get('not_testable_here') or 'no reason recorded'}"
        rows.append({"id": c["id"], "claim": c["claim"], "verdict": text})
    return pd.DataFrame(rows)
