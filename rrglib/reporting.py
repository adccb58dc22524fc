"""Reading a study's results back: training logs, evaluation files, the summary table, figures.

The notebooks call these; nothing here trains or generates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from .metrics import StudyStats, paired_test

HEADLINE = ["BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "F1-RB-14-micro", "F1-RB-14-macro",
            "F1-RB-5-micro", "P-RB-14-micro", "R-RB-14-micro"]


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


def paired_table(stats: dict[str, StudyStats], reference: str, metrics: list[str],
                 n_resamples: int = 5000) -> pd.DataFrame:
    """Paired permutation p-values of every system against `reference` on the same studies."""
    rows = {}
    for name, s in stats.items():
        if name == reference:
            continue
        rows[name] = {f"p({m})": paired_test(s, stats[reference], m, n_resamples=n_resamples) for m in metrics}
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
