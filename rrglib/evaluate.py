"""Evaluate a trained run: batched generation on a split, then every metric with intervals.

    python -m rrglib.evaluate --run runs/demo/frozen --split test [--checkpoint best] [--images true]

Writes `<run>/eval-<split>[-<images>]/` (or --out): generations, metrics with 95% bootstrap
intervals, decoding settings, checkpoint and config hash. `--images blank|shuffled` shows a constant
gray or another patient's image: a report that does not change has not used the image.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .config import GenerationConfig, RunConfig
from .data import ReportCollator, ReportDataset, dataset_for, derangement, load_manifest
from .devices import autocast, place
from .metrics import java_available, results_table, score_reports
from .model import ReportGenerator, check_decoding, check_same_model

IMAGE_SOURCES = ("true", "blank", "shuffled")
REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_path(path: str | Path, what: str = "file") -> Path:
    """A path from a saved config: absolute as is; relative to the working directory, else to the
    repository root (where training runs from). Raises FileNotFoundError naming every path tried."""
    path = Path(path).expanduser()
    tried = [path] if path.is_absolute() else [Path.cwd() / path, REPO_ROOT / path]
    for candidate in tried:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{what} {str(path)!r} not found; tried {', '.join(str(t) for t in tried)}. "
                            "Run from the checkout that trained the run, or fix the path in its config.yaml.")


def run_config(run_dir: str | Path, checkpoint: str = "best") -> RunConfig:
    """The config a saved model of a training run was trained with."""
    path = Path(run_dir) / checkpoint
    if not (path / "model_config.yaml").is_file():
        raise FileNotFoundError(f"{path} holds no saved model; train the run first "
                                f"(python -m rrglib.train --config ...) or pick --checkpoint final")
    return RunConfig.from_yaml(path / "config.yaml")


def load_run(run_dir: str | Path, checkpoint: str = "best",
             device: torch.device | str | None = None) -> tuple[ReportGenerator, RunConfig]:
    """The saved model (`best` or `final`) of a run, in eval mode on `device` (default: the
    accelerator when present), and the run's config."""
    cfg = run_config(run_dir, checkpoint)
    model = ReportGenerator.from_pretrained(Path(run_dir) / checkpoint)
    check_same_model(model.cfg, cfg.model, str(Path(run_dir) / checkpoint / "config.yaml"))
    return place(model, device).eval(), cfg


def decoding_with(base: GenerationConfig, num_beams: int | None = None,
                  max_new_tokens: int | None = None) -> GenerationConfig:
    """A checked copy of `base` with the given command-line overrides."""
    changes = {"num_beams": num_beams, "max_new_tokens": max_new_tokens}
    decoding = dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})
    check_decoding(decoding.num_beams, decoding.max_new_tokens, decoding.do_sample, decoding.temperature)
    return decoding


class JavaError(RuntimeError):
    """A `java` on PATH that does not run."""


def check_java() -> None:
    """Raise a one-line error when a `java` on PATH does not run (the metrics would fail obscurely)."""
    if not java_available():
        return  # no Java at all: the metrics fall back to Python and say so
    try:
        proc = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=60)
        ok, detail = proc.returncode == 0, f"exit code {proc.returncode}: {proc.stderr.strip()[-200:]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        ok, detail = False, str(exc)
    if not ok:
        raise JavaError(f"`java -version` failed ({detail}). METEOR and the PTB tokenizer need a "
                        "working Java 17: install OpenJDK 17, or set RRG_NO_JAVA=1 to score without "
                        "Java (approximate BLEU/ROUGE-L/CIDEr, no METEOR).")


def blank_like(images: torch.Tensor, mean, std, level: float = 0.5) -> torch.Tensor:
    """A uniform gray image at `level`, normalised with the encoder's mean and std."""
    m, s = (torch.tensor(v, dtype=images.dtype, device=images.device).view(1, -1, 1, 1) for v in (mean, std))
    return ((torch.full_like(images, level) - m) / s).contiguous()


@torch.no_grad()
def generate_reports(model: ReportGenerator, dataset: ReportDataset, decoding: GenerationConfig,
                     batch_size: int = 16, images: str = "true", mixed_precision: str = "no", seed: int = 0,
                     show: bool = True) -> pd.DataFrame:
    """A report for every study, on the model's device under the run's precision: id, reference,
    generated, logprobs, token_ids."""
    if images not in IMAGE_SOURCES:
        raise ValueError(f"images must be one of {IMAGE_SOURCES}, got {images!r}")
    model.eval()
    device = next(model.parameters()).device
    source = Subset(dataset, derangement(len(dataset), seed).tolist()) if images == "shuffled" else dataset
    loader = DataLoader(source, batch_size=batch_size, shuffle=False, collate_fn=ReportCollator(None),
                        generator=torch.Generator())
    rows: list[dict[str, Any]] = []
    for batch in tqdm(loader, desc=f"generating ({images} images)", disable=not show):
        pixels = batch["images"].to(device)
        if images == "blank":  # a uniform gray, normalised like every image: no anatomy at all
            pixels = blank_like(pixels, model.encoder.mean, model.encoder.std)
        # ids and references are the studies' own, whichever image was shown
        own = dataset.df.iloc[len(rows):len(rows) + len(pixels)]
        with autocast(mixed_precision, device):
            out = model.generate(images=pixels, **dataclasses.asdict(decoding))
        for i, r, g, lp, t in zip(own["id"], own["report"], out.texts, out.logprobs, out.token_ids, strict=True):
            rows.append({"id": str(i), "reference": str(r), "generated": g,
                         "logprobs": json.dumps([round(v, 5) for v in lp]), "token_ids": json.dumps(t)})
    return pd.DataFrame(rows)


def score_generations(gens: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                      nlg_backend: str = "auto") -> dict[str, Any]:
    """All metrics of a generations table with bootstrap intervals; `nlg_backend="python"` skips
    Java (approximate NLG, no METEOR) where only the clinical metrics matter."""
    hyps = [g if isinstance(g, str) else "" for g in gens["generated"]]
    return score_reports(list(gens["reference"]), hyps, ids=list(gens["id"]), n_boot=n_boot, seed=seed,
                         backend=nlg_backend)


def write_results(out_dir: Path, gens: pd.DataFrame, result: dict[str, Any], info: dict[str, Any]) -> None:
    """generations.csv, metrics.json, metrics.csv, per_observation.csv, study_stats.csv."""
    out_dir.mkdir(parents=True, exist_ok=True)
    gens.to_csv(out_dir / "generations.csv", index=False)
    results_table(result).rename_axis("metric").to_csv(out_dir / "metrics.csv")
    result["per_observation"].to_csv(out_dir / "per_observation.csv")
    stats = result["stats"]
    # per-study sufficient statistics: later paired tests need no re-scoring (and no Java)
    pd.DataFrame(stats.values, index=pd.Index([str(i) for i in stats.ids], name="id"),
                 columns=stats.columns).to_csv(out_dir / "study_stats.csv")
    payload = {"metrics": result["metrics"], "ci95": {k: list(v) for k, v in result["ci"].items()},
               "n": result["n"], "meteor_scale": stats.meteor_scale, "labeler": stats.tag, **info}
    (out_dir / "metrics.json").write_text(json.dumps(payload, indent=2, default=str))


def evaluate_run(run_dir: str | Path, split: str = "test", checkpoint: str = "best", images: str = "true",
                 out_dir: str | Path | None = None, max_samples: int | None = None,
                 decoding: GenerationConfig | None = None, n_boot: int = 1000,
                 num_threads: int | None = None, show: bool = True,
                 device: torch.device | str | None = None) -> dict[str, Any]:
    """Generate for a split and score it; returns the metrics payload (also written to disk).
    `max_samples` (>= 1) caps the studies scored; None uses the run's `data.max_eval_samples`."""
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be at least 1 (or None for the run's setting), got {max_samples}")
    check_java()  # before minutes of generation, not after
    if num_threads:
        torch.set_num_threads(num_threads)
    run_dir = Path(run_dir)
    model, cfg = load_run(run_dir, checkpoint, device)
    decoding = decoding or cfg.generation
    manifest_path = resolve_path(cfg.data.manifest, f"manifest (data.manifest of {run_dir / checkpoint / 'config.yaml'})")
    dataset = dataset_for(cfg, split, load_manifest(manifest_path), max_samples or cfg.data.max_eval_samples)
    if len(dataset) == 0:
        raise ValueError(f"{manifest_path} has no studies in split {split!r}")
    tic = time.perf_counter()
    gens = generate_reports(model, dataset, decoding, cfg.data.eval_batch_size, images,
                            cfg.train.mixed_precision, seed=cfg.train.seed, show=show)
    gen_seconds = time.perf_counter() - tic
    result = score_generations(gens, n_boot=n_boot, seed=cfg.train.seed)
    out = Path(out_dir) if out_dir else run_dir / ("eval-" + split + ("" if images == "true" else f"-{images}"))
    info = {"run": cfg.name, "split": split, "checkpoint": checkpoint, "images": images,
            "decoding": dataclasses.asdict(decoding), "config_hash": cfg.hash(),
            "generation_seconds": gen_seconds, "reports_per_s": len(gens) / gen_seconds}
    write_results(out, gens, result, info)
    return {"metrics": result["metrics"], "ci95": result["ci"], "n": result["n"], "out_dir": str(out),
            "per_observation": result["per_observation"], "stats": result["stats"], **info}


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    if (value := int(text)) < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate reports for a split and score them.")
    parser.add_argument("--run", required=True, help="training run directory (holds best/ and final/)")
    parser.add_argument("--split", default="test", choices=["train", "validate", "test"])
    parser.add_argument("--checkpoint", default="best", choices=["best", "final"])
    parser.add_argument("--images", default="true", choices=IMAGE_SOURCES)
    parser.add_argument("--out", default=None, help="output folder (default <run>/eval-<split>)")
    for flag in ("--max-samples", "--num-beams", "--max-new-tokens"):
        parser.add_argument(flag, type=positive_int, default=None)
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args(argv)
    try:
        decoding = decoding_with(run_config(args.run, args.checkpoint).generation, args.num_beams,
                                 args.max_new_tokens)
        res = evaluate_run(args.run, args.split, args.checkpoint, args.images, args.out, args.max_samples,
                           decoding, args.n_boot)
    except (FileNotFoundError, ValueError, JavaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    for k in ["BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "F1-RB-14-micro", "F1-RB-5-micro"]:
        lo, hi = res["ci95"].get(k, (float("nan"), float("nan")))
        print(f"{k:>16}: {res['metrics'][k]:.4f}  [{lo:.4f}, {hi:.4f}]")
    print(f"written to {res['out_dir']}")


if __name__ == "__main__":
    main()
