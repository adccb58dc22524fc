"""Reading a study's results back: training logs, evaluation files, the summary table, figures,
the pre-registered claims table and the paper's reported numbers.

The notebooks call these; nothing here trains or generates.
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
from .metrics.seeds import compare_arms, holm, mean_sd, summarize_arm

# The primary metric first among the clinical ones; F1-RB-14 and F1-RB-5 are secondary.
HEADLINE = ["BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", PRIMARY_METRIC, "P-RB-13abn-micro",
            "R-RB-13abn-micro", "F1-RB-14-micro", "F1-RB-14-macro", "F1-RB-5-micro"]


def read_log(run_work_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """metrics.jsonl of a training run -> (per-step frame, per-epoch frame)."""
    path = Path(run_work_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: has the run been trained (20_train)?")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    frame = pd.DataFrame(records)
    return (frame[frame["kind"] == "step"].dropna(axis=1, how="all").reset_index(drop=True),
            frame[frame["kind"] == "epoch"].dropna(axis=1, how="all").reset_index(drop=True))


def plot_training(steps: pd.DataFrame, epochs: pd.DataFrame, title: str = "") -> plt.Figure:
    """Training loss by step (stage marked) and validation loss with true vs shuffled images."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for stage, part in steps.groupby("stage"):
        axes[0].plot(part["step"], part["loss"], ".-", ms=3, label=f"stage {stage}")
    axes[0].set(xlabel="optimizer step", ylabel="training loss", title="training")
    axes[0].legend()
    axes[1].plot(epochs["epoch"], epochs["val_loss"], "o-", label="true images")
    axes[1].plot(epochs["epoch"], epochs["val_loss_shuffled"], "s--", label="shuffled images")
    axes[1].set(xlabel="epoch", ylabel="validation LM loss", title="validation")
    axes[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def load_eval(eval_dir: str | Path) -> dict[str, Any]:
    """metrics.json + generations.csv of one evaluation folder."""
    eval_dir = Path(eval_dir)
    if not (eval_dir / "metrics.json").is_file():
        raise FileNotFoundError(f"{eval_dir / 'metrics.json'} not found: run 30_evaluate first")
    payload = json.loads((eval_dir / "metrics.json").read_text())
    payload["generations"] = pd.read_csv(eval_dir / "generations.csv", keep_default_na=False, dtype={"id": str})
    payload["eval_dir"] = str(eval_dir)
    return payload


def metric_row(payload: dict[str, Any], metrics: list[str] = HEADLINE) -> dict[str, Any]:
    """One table row: 'value [low, high]' strings keyed by metric, plus raw values."""
    row: dict[str, Any] = {}
    for m in metrics:
        v = payload["metrics"].get(m)
        lo, hi = payload.get("ci95", {}).get(m, (float("nan"), float("nan")))
        row[m] = v
        row[f"{m} CI"] = f"[{lo:.3f}, {hi:.3f}]"
    return row


def systems_table(evals: dict[str, dict[str, Any]], metrics: list[str] = HEADLINE) -> pd.DataFrame:
    """Systems x metrics with 95% intervals, from {system name: metrics payload}."""
    rows = {name: metric_row(p, metrics) for name, p in evals.items()}
    return pd.DataFrame.from_dict(rows, orient="index")


def stats_of(payload: dict[str, Any]) -> StudyStats:
    """Per-study statistics an evaluation saved (study_stats.csv), for paired tests."""
    table = pd.read_csv(Path(payload["eval_dir"]) / "study_stats.csv", index_col="id", dtype={"id": str})
    return StudyStats(list(table.index), list(table.columns), table.to_numpy(dtype=float),
                      meteor_scale=payload.get("meteor_scale", 1.0), tag=payload.get("labeler", "RB"))


def clusters_for(ids: Sequence[Any], manifest: pd.DataFrame, column: str = "source_id") -> np.ndarray:
    """One cluster id per study (the manifest's `column`, e.g. the IU report a demo case came from)."""
    if column not in manifest.columns:
        raise KeyError(f"manifest has no {column!r} column (columns: {list(manifest.columns)}); "
                       "rebuild the data with a builder that records it, or pass clusters=None")
    table = manifest.assign(id=manifest["id"].astype(str)).set_index("id")[column]
    missing = [i for i in map(str, ids) if i not in table.index]
    if missing:
        raise KeyError(f"{len(missing)} study ids are not in the manifest, e.g. {missing[:3]}: "
                       "was the evaluation run on this data?")
    return table.loc[[str(i) for i in ids]].to_numpy()


def paired_table(stats: dict[str, StudyStats], reference: str, metrics: list[str],
                 n_resamples: int = 5000, clusters: Any = None) -> pd.DataFrame:
    """Paired permutation p-values of every system against `reference` on the same studies."""
    rows = {}
    for name, s in stats.items():
        if name == reference:
            continue
        rows[name] = {f"p({m})": paired_test(s, stats[reference], m, n_resamples=n_resamples,
                                             clusters=clusters) for m in metrics}
        rows[name].update({f"Δ{m}": s.point()[m] - stats[reference].point()[m] for m in metrics})
    return pd.DataFrame.from_dict(rows, orient="index")


def side_by_side(gens: dict[str, pd.DataFrame], ids: list[str]) -> pd.DataFrame:
    """Reference and every system's report for the given study ids."""
    first = next(iter(gens.values())).set_index("id")
    table = pd.DataFrame({"reference": first.loc[ids, "reference"]})
    for name, g in gens.items():
        table[name] = g.set_index("id").loc[ids, "generated"]
    return table


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A GitHub markdown table (no extra dependency)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if pd.isna(v) else format(v, floatfmt)
        return str(v)

    head = [str(frame.index.name or "")] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for idx, row in frame.iterrows():
        lines.append("| " + " | ".join([str(idx)] + [cell(v) for v in row]) + " |")
    return "\n".join(lines)


def write_index(study_dir: str | Path, runs: list[str], sections: dict[str, pd.DataFrame],
                notes: str = "") -> Path:
    """results/<study>/README.md: links to every rendered notebook and figure, and the tables."""
    study_dir = Path(study_dir)
    lines = [f"# Study `{study_dir.name}`", "", notes, "", "## Rendered notebooks", ""]
    study_level = sorted(p.name for p in study_dir.glob("*.html"))
    lines += [f"- [{name[:-5]}]({name})" for name in study_level]
    for run in runs:
        pages = sorted(p.name for p in (study_dir / run).glob("*.html"))
        figures = sorted(p.name for p in (study_dir / run).glob("*.png"))
        links = ", ".join(f"[{p[:-5]}]({run}/{p})" for p in pages)
        figs = ", ".join(f"[{p[:-4]}]({run}/{p})" for p in figures)
        lines.append(f"- **{run}**: {links}" + (f" — figures: {figs}" if figs else ""))
    for title, frame in sections.items():
        lines += ["", f"## {title}", "", markdown_table(frame)]
    path = study_dir / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# --- seeds: the unit of replication ------------------------------------------------------------
def seed_runs(study_dir: str | Path, arms: Mapping[str, Sequence[str]],
              eval_name: str = "eval-test") -> dict[str, list[StudyStats]]:
    """{arm: per-seed StudyStats} from {arm: its runs' folder names} under `study_dir`."""
    return {arm: [stats_of(load_eval(Path(study_dir) / run / eval_name)) for run in runs]
            for arm, runs in arms.items()}


def seed_table(runs: Mapping[str, Sequence[StudyStats]], metrics: Sequence[str],
               n_boot: int = 2000, clusters: Any = None, level: float = 0.95) -> pd.DataFrame:
    """Arm x metric: seeds, mean, sd, "mean ± sd", and intervals covering seed and test-set variance."""
    rows = []
    for arm, arm_runs in runs.items():
        for m in metrics:
            s = summarize_arm(arm_runs, m, n_boot, clusters=clusters, level=level)
            rows.append({"arm": arm, "metric": m, "seeds": len(s.scores), "mean": s.mean, "sd": s.sd,
                         "mean ± sd": f"{s.mean:.3f} ± {s.sd:.3f}", "ci low": s.ci[0],
                         "ci high": s.ci[1], "bootstrap low": s.ci_bootstrap[0],
                         "bootstrap high": s.ci_bootstrap[1]})
    return pd.DataFrame(rows)


# --- p-values, pre-registered hypotheses and the claims table -----------------------------------
def format_p(p: float, n_resamples: int | None = None) -> str:
    """A p-value for a table: at a resampling test's floor 1/(n+1) it reads "< 1/(n+1)", not 0.000."""
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
            raise ValueError(f"hypothesis {dict(spec)}: missing keys {missing}, unknown keys {unknown}; "
                             "expected name, arm_a, arm_b and optional metric, direction, text, family")
        return cls(**spec)


def verdict(estimate: float, p_adjusted: float, direction: str, alpha: float = 0.05) -> str:
    """One of VERDICTS: supported (Holm-adjusted p < alpha, predicted sign), contradicted
    (significant, opposite sign), otherwise not supported at this power."""
    if not p_adjusted < alpha:
        return VERDICTS[2]
    predicted = estimate > 0 if direction == "greater" else estimate < 0
    return VERDICTS[0] if predicted else VERDICTS[1]


def _statement(h: Hypothesis, row: dict[str, Any], alpha: float, level: float) -> str:
    sign = ">" if h.direction == "greater" else "<"
    text = (f"{row['verdict']}: predicted {h.arm_a} {sign} {h.arm_b} on {h.metric}; observed "
            f"{row['estimate']:+.4f} (mean over {row['seeds A']} vs {row['seeds B']} seeds; "
            f"unadjusted {level:.0%} interval over seeds and test set "
            f"[{row['ci low']:+.4f}, {row['ci high']:+.4f}]), "
            f"Holm-adjusted p = {format_p(row['p Holm'])}")
    text += f" {'<' if row['p Holm'] < alpha else '>='} {alpha}"
    if row["verdict"] == VERDICTS[2]:
        text += (f"; the smallest difference this design detects with 80% power is "
                 f"{row['detectable at 80%']:.4f}")
    return text


def claims_table(hypotheses: Sequence[Hypothesis | Mapping[str, Any]],
                 runs: Mapping[str, Sequence[StudyStats]], alpha: float = 0.05,
                 clusters: Any = None, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> pd.DataFrame:
    """One row per pre-registered hypothesis: estimate, interval, raw and Holm p, verdict.

    `runs` maps an arm to its per-seed StudyStats (>= 2 seeds; the design asks >= 3), all on
    the same test studies; `clusters` gives one source id per study. Holm adjusts within each
    `family` of hypotheses (the primary family apart from any secondary one). "ci" is the t
    interval of the seed-level test (seed and test-set variance; rrglib.metrics.seeds says why
    not the bootstrap one, kept as "bootstrap"). The power column is the smallest difference
    detected with 80% power at alpha / m (m the family's size), Holm's strictest step.
    `statement` is the full, untruncated sentence.
    """
    hyps = [h if isinstance(h, Hypothesis) else Hypothesis.from_dict(h) for h in hypotheses]
    absent = sorted({a for h in hyps for a in (h.arm_a, h.arm_b)} - set(runs))
    if absent:
        raise KeyError(f"arms {absent} have no runs (arms with runs: {sorted(runs)}); the "
                       "pre-registered family needs every arm it names")
    size = {f: sum(h.family == f for h in hyps) for f in {h.family for h in hyps}}
    rows = [_comparison_row(h, runs, alpha / size[h.family], n_boot, seed, clusters, level)
            for h in hyps]
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


def _comparison_row(h: Hypothesis, runs: Mapping[str, Sequence[StudyStats]], power_alpha: float,
                    n_boot: int, seed: int, clusters: Any, level: float) -> dict[str, Any]:
    c = compare_arms(runs[h.arm_a], runs[h.arm_b], h.metric, n_boot, seed, clusters, level,
                     power_alpha=power_alpha)
    (mean_a, sd_a), (mean_b, sd_b) = mean_sd(runs[h.arm_a], h.metric), mean_sd(runs[h.arm_b], h.metric)
    return {"hypothesis": h.name, "family": h.family, "text": h.text, "A": h.arm_a, "B": h.arm_b,
            "metric": h.metric, "predicted": DIRECTIONS[h.direction],
            "seeds A": len(c.scores_a), "seeds B": len(c.scores_b),
            "mean A": mean_a, "sd A": sd_a, "mean B": mean_b, "sd B": sd_b,
            "estimate": c.estimate, "ci low": c.ci[0], "ci high": c.ci[1],
            "bootstrap low": c.ci_bootstrap[0], "bootstrap high": c.ci_bootstrap[1],
            "sd test set": c.sd_test, "t": c.test.t, "df": c.test.df, "p": c.p,
            "detectable at 80%": c.mde}


# --- the paper's reported numbers and claims (configs/paper_reported.yaml) ----------------------
PAPER_KEYS = ("source", "scale", "setup", "results", "claims")


def load_paper_reported(path: str | Path = "configs/paper_reported.yaml") -> dict[str, Any]:
    """The paper's facts: source, scale (the paper's 0-100), setup, results[llm][strategy], claims."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the paper's numbers live in configs/paper_reported.yaml")
    paper = yaml.safe_load(path.read_text()) or {}
    missing = [k for k in PAPER_KEYS if k not in paper]
    bad = [c for c in paper.get("claims") or [] if not {"id", "claim"} <= set(c)]
    if missing or bad:
        raise ValueError(f"{path}: missing top-level keys {missing}; claims without id/claim: {bad}")
    return paper


def paper_results_table(paper: Mapping[str, Any]) -> pd.DataFrame:
    """Long table LLM, strategy, metric, paper value (0-100), on our 0-1 scale; null = not given."""
    divisor = float(paper["scale"]["paper_max"]) / float(paper["scale"]["ours_max"])
    rows = [{"LLM": llm, "strategy": strategy, "metric": metric, "paper (0-100)": value,
             "paper on our 0-1 scale": None if value is None else value / divisor}
            for llm, strategies in paper["results"].items() if isinstance(strategies, dict)
            for strategy, values in strategies.items() if isinstance(values, dict)
            for metric, value in values.items()]
    return pd.DataFrame(rows)


def paper_beside_ours(paper: Mapping[str, Any], ours: Mapping[str, float],
                      llm: str = "OpenLLaMA-7B", strategy: str = "two_stage") -> pd.DataFrame:
    """The paper's reported numbers (one LLM, one strategy) beside ours, both on the 0-1 scale.

    `ours` maps our metric names to values; paper metrics map to ours via `comparable_metrics`
    in the YAML (e.g. F1-CheXbert-14 -> F1-RB-14-micro: another labeler, so not the same number).
    """
    table = paper_results_table(paper)
    table = table[(table["LLM"] == llm) & (table["strategy"] == strategy)]
    rows = []
    for _, r in table.iterrows():
        match = paper.get("comparable_metrics", {}).get(r["metric"], {})
        ours_name = match.get("ours")
        rows.append({"paper metric": r["metric"], "paper (0-1)": r["paper on our 0-1 scale"],
                     "our metric": ours_name, "ours (0-1)": ours.get(ours_name) if ours_name else None,
                     "note": match.get("note", "")})
    return pd.DataFrame(rows)


def paper_claims_table(paper: Mapping[str, Any], claims: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every claim of the paper with an untruncated verdict from our pre-registered tests.

    A claim's `tested_by` names hypotheses of `claims` (claims_table output): their statements
    are its verdict, with the claim's `scope` note; otherwise its `not_testable_here` reason.
    """
    rows = []
    for c in paper["claims"]:
        tested_by = list(c.get("tested_by") or [])
        found = claims[claims["hypothesis"].isin(tested_by)] if claims is not None and tested_by else None
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
