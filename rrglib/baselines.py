"""Reference points scored with the same code as the models.

- most frequent: the commonest training report, for every test study;
- retrieval: the training report whose image is nearest by (frozen, pretrained) encoder feature;
- image-blind controls: not here — training runs with `data.image_pairing: deranged` (or `model.image_blind: true`).

    python -m rrglib.baselines --config configs/demo.yaml --out runs/demo/baselines [--split test]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from .config import RunConfig, load_config
from .data import ReportDataset, dataset_for, load_manifest
from .encoder import build_encoder
from .evaluate import score_generations, write_results
from .features import encode_dataset


def most_frequent_report(train_reports: pd.Series) -> str:
    """The commonest training report (ties broken by first occurrence)."""
    counts = train_reports.value_counts(sort=False)
    return str(counts.idxmax())


def most_frequent_generations(train: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    text = most_frequent_report(train["report"])
    return pd.DataFrame({"id": test["id"].astype(str), "reference": test["report"], "generated": text})


def pooled_features(encoder: torch.nn.Module, dataset: ReportDataset, batch_size: int) -> torch.Tensor:
    """Mean-pooled, L2-normalised encoder features (N, C)."""
    tokens = encode_dataset(encoder.eval(), dataset, batch_size, show=False)
    return F.normalize(tokens.float().mean(1), dim=-1)


def retrieval_generations(train_feats: torch.Tensor, test_feats: torch.Tensor, train: pd.DataFrame,
                          test: pd.DataFrame) -> pd.DataFrame:
    """Nearest training study by cosine similarity; its report is the prediction."""
    nearest = (test_feats @ train_feats.T).argmax(1).tolist()
    return pd.DataFrame({"id": test["id"].astype(str).tolist(), "reference": test["report"].tolist(),
                         "generated": [str(train["report"].iloc[j]) for j in nearest]})


def run_baselines(cfg: RunConfig, out_dir: str | Path, split: str = "test", n_boot: int = 1000,
                  max_samples: int | None = None) -> dict[str, dict[str, Any]]:
    """Score both baselines on a split; writes <out>/<name>/{generations,metrics}.*"""
    out_dir = Path(out_dir)
    manifest = load_manifest(cfg.data.manifest)
    encoder = build_encoder(cfg.model.encoder)
    train_ds = dataset_for(cfg, "train", manifest)
    test_ds = dataset_for(cfg, split, manifest, max_samples=max_samples)
    gens = {"most_frequent": most_frequent_generations(train_ds.df, test_ds.df)}
    with torch.no_grad():
        train_feats = pooled_features(encoder, train_ds, cfg.data.eval_batch_size)
        test_feats = pooled_features(encoder, test_ds, cfg.data.eval_batch_size)
    gens["retrieval"] = retrieval_generations(train_feats, test_feats, train_ds.df, test_ds.df)
    results = {}
    for name, table in gens.items():
        result = score_generations(table, n_boot=n_boot, seed=cfg.train.seed)
        info = {"run": name, "split": split, "baseline": True, "encoder": cfg.model.encoder.name}
        write_results(out_dir / name, table, result, info)
        results[name] = {"metrics": result["metrics"], "ci95": result["ci"], "n": result["n"],
                         "stats": result["stats"]}
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Most-frequent-report and retrieval baselines.")
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    res = run_baselines(load_config(args.config, args.overrides), args.out, args.split, args.n_boot)
    print(json.dumps({k: {m: round(v, 4) for m, v in r["metrics"].items() if m.startswith(("BLEU-4", "F1-RB-14-micro", "CIDEr"))}
                      for k, r in res.items()}, indent=2))


if __name__ == "__main__":
    main()
