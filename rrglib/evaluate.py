"""Evaluate a trained run: batched generation on a split, then every metric with intervals.

    python -m rrglib.evaluate --run runs/demo/frozen --split test [--checkpoint best] [--images true]

Writes into `<run>/eval-<split>[-<images>]/` (or --out): `generations.csv` (id, reference,
generated, per-token log-probs), `metrics.json` (values, 95% bootstrap intervals, decoding
settings, checkpoint, config hash), tidy `metrics.csv` and `per_observation.csv`.
`--images blank|shuffled` replaces every image by a constant gray or by another patient's image:
the grounding check (a report that does not change has not used the image).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .config import GenerationConfig, RunConfig
from .data import ReportCollator, ReportDataset, load_manifest
from .metrics import results_table, score_reports
from .model import ReportGenerator

IMAGE_SOURCES = ("true", "blank", "shuffled")


def run_config(run_dir: str | Path, checkpoint: str = "best") -> RunConfig:
    """The config a saved model of a training run was trained with."""
    path = Path(run_dir) / checkpoint
    if not (path / "model_config.yaml").is_file():
        raise FileNotFoundError(f"{path} holds no saved model; train the run first "
                                f"(python -m rrglib.train --config ...) or pick --checkpoint final")
    return RunConfig.from_yaml(path / "config.yaml")


def load_run(run_dir: str | Path, checkpoint: str = "best") -> tuple[ReportGenerator, RunConfig]:
    """The saved model (`best` or `final`) of a training run and the run's config."""
    cfg = run_config(run_dir, checkpoint)
    return ReportGenerator.from_pretrained(Path(run_dir) / checkpoint).eval(), cfg


def blank_like(images: torch.Tensor, mean, std, level: float = 0.5) -> torch.Tensor:
    """A uniform gray image at `level`, normalised with the encoder's mean and std."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return ((torch.full_like(images, level) - m) / s).contiguous()


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A permutation with no fixed point: every study gets another patient's image."""
    if n < 2:
        raise ValueError("a shuffled-image control needs at least two studies")
    perm = np.random.default_rng(seed).permutation(n)
    return np.roll(perm, 1)[np.argsort(perm)]


def autocast_for(cfg: RunConfig):
    """bf16 autocast where the run trained in bf16 (on CPU or GPU), else a no-op."""
    if cfg.train.mixed_precision == "bf16":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.autocast(device, dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def generate_reports(model: ReportGenerator, dataset: ReportDataset, decoding: GenerationConfig,
                     batch_size: int = 16, images: str = "true", autocast=None, seed: int = 0,
                     show: bool = True) -> pd.DataFrame:
    """Generate a report for every study of the dataset: id, reference, generated, logprobs."""
    if images not in IMAGE_SOURCES:
        raise ValueError(f"images must be one of {IMAGE_SOURCES}, got {images!r}")
    model.eval()
    device = next(model.parameters()).device
    source = dataset
    if images == "shuffled":
        source = Subset(dataset, derangement(len(dataset), seed).tolist())
    loader = DataLoader(source, batch_size=batch_size, shuffle=False, collate_fn=ReportCollator(None),
                        generator=torch.Generator())
    rows: list[dict[str, Any]] = []
    ctx = autocast if autocast is not None else torch.autocast("cpu", enabled=False)
    start = 0
    for batch in tqdm(loader, desc=f"generating ({images} images)", disable=not show):
        pixels = batch["images"].to(device)
        if images == "blank":  # a uniform gray, normalised like every image: no anatomy at all
            pixels = blank_like(pixels, model.encoder.mean, model.encoder.std)
        # ids and references are the studies' own, whichever image was shown
        own = dataset.df.iloc[start:start + len(pixels)]
        ids, refs = [str(i) for i in own["id"]], [str(r) for r in own["report"]]
        start += len(pixels)
        with ctx:
            texts, logprobs, token_ids = model.generate(images=pixels, return_scores=True,
                                                        return_token_ids=True, **dataclasses.asdict(decoding))
        for i, r, g, lp, t in zip(ids, refs, texts, logprobs, token_ids, strict=True):
            rows.append({"id": i, "reference": r, "generated": g,
                         "logprobs": json.dumps([round(v, 5) for v in lp]), "token_ids": json.dumps(t)})
    return pd.DataFrame(rows)


def score_generations(gens: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                      nlg_backend: str = "auto") -> dict[str, Any]:
    """All metrics of a generations table (NLG, clinical efficacy) with bootstrap intervals.

    `nlg_backend="python"` skips Java (approximate NLG numbers, no METEOR) where only the
    clinical metrics matter, e.g. the grounding controls.
    """
    hyps = [g if isinstance(g, str) else "" for g in gens["generated"]]
    return score_reports(list(gens["reference"]), hyps, ids=list(gens["id"]), n_boot=n_boot, seed=seed,
                         backend=nlg_backend)


def write_results(out_dir: Path, gens: pd.DataFrame, result: dict[str, Any], info: dict[str, Any]) -> None:
    """generations.csv, metrics.json, metrics.csv, per_observation.csv."""
    out_dir.mkdir(parents=True, exist_ok=True)
    gens.to_csv(out_dir / "generations.csv", index=False)
    table = results_table(result)
    table.index.name = "metric"
    table.to_csv(out_dir / "metrics.csv")
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
                 num_threads: int | None = None, show: bool = True) -> dict[str, Any]:
    """Generate for a split and score it; returns the metrics payload (also written to disk)."""
    if num_threads:
        torch.set_num_threads(num_threads)
    run_dir = Path(run_dir)
    model, cfg = load_run(run_dir, checkpoint)
    decoding = decoding or cfg.generation
    manifest = load_manifest(cfg.data.manifest)
    enc = model.encoder
    dataset = ReportDataset(manifest, split, cfg.model.encoder.image_size, enc.mean, enc.std,
                            max_samples=max_samples or cfg.data.max_eval_samples)
    if len(dataset) == 0:
        raise ValueError(f"{cfg.data.manifest} has no studies in split {split!r}")
    tic = time.perf_counter()
    gens = generate_reports(model, dataset, decoding, cfg.data.eval_batch_size, images,
                            autocast_for(cfg), seed=cfg.train.seed, show=show)
    gen_seconds = time.perf_counter() - tic
    result = score_generations(gens, n_boot=n_boot, seed=cfg.train.seed)
    suffix = "" if images == "true" else f"-{images}"
    out = Path(out_dir) if out_dir else run_dir / f"eval-{split}{suffix}"
    info = {"run": cfg.name, "split": split, "checkpoint": checkpoint, "images": images,
            "decoding": dataclasses.asdict(decoding), "config_hash": cfg.hash(),
            "generation_seconds": gen_seconds, "reports_per_s": len(gens) / gen_seconds}
    write_results(out, gens, result, info)
    return {"metrics": result["metrics"], "ci95": result["ci"], "n": result["n"], "out_dir": str(out),
            "per_observation": result["per_observation"], "stats": result["stats"], **info}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate reports for a split and score them.")
    parser.add_argument("--run", required=True, help="training run directory (holds best/ and final/)")
    parser.add_argument("--split", default="test", choices=["train", "validate", "test"])
    parser.add_argument("--checkpoint", default="best", choices=["best", "final"])
    parser.add_argument("--images", default="true", choices=IMAGE_SOURCES)
    parser.add_argument("--out", default=None, help="output folder (default <run>/eval-<split>)")
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--num-beams", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args(argv)
    try:
        cfg = run_config(args.run, args.checkpoint)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    decoding = cfg.generation
    if args.num_beams is not None:
        decoding.num_beams = args.num_beams
    if args.max_new_tokens is not None:
        decoding.max_new_tokens = args.max_new_tokens
    res = evaluate_run(args.run, args.split, args.checkpoint, args.images, args.out, args.max_samples,
                       decoding, args.n_boot)
    keys = ["BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "F1-RB-14-micro", "F1-RB-5-micro"]
    for k in keys:
        lo, hi = res["ci95"].get(k, (float("nan"), float("nan")))
        print(f"{k:>16}: {res['metrics'][k]:.4f}  [{lo:.4f}, {hi:.4f}]")
    print(f"written to {res['out_dir']}")


if __name__ == "__main__":
    main()
