"""Reference points scored with the same code as the models: the commonest training report, and
the training report whose image is nearest by (frozen, pretrained) encoder feature. The image-blind
controls are training runs (`data.image_pairing: deranged`).

    python -m rrglib.baselines --config configs/demo.yaml --out runs/demo/baselines [--split test]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .config import RunConfig, load_config
from .data import dataset_for, load_manifest
from .encoder import build_encoder
from .evaluate import score_generations, write_results
from .features import encode_dataset


def most_frequent_report(train_reports: pd.Series) -> str:
    """The commonest training report (ties broken by first occurrence)."""
    return str(train_reports.value_counts(sort=False).idxmax())


def pooled_features(encoder: torch.nn.Module, dataset: Dataset, batch_size: int) -> torch.Tensor:
    """Mean-pooled, L2-normalised encoder features (N, C)."""
    tokens = encode_dataset(encoder, dataset, batch_size, show=False)
    return F.normalize(tokens.float().mean(1), dim=-1)


def retrieval_generations(train_feats: torch.Tensor, test_feats: torch.Tensor, train: pd.DataFrame,
                          test: pd.DataFrame) -> pd.DataFrame:
    """Nearest training study by cosine similarity; its report is the prediction."""
    nearest = (test_feats @ train_feats.T).argmax(1).tolist()
    return pd.DataFrame({"id": test["id"].astype(str).tolist(), "reference": test["report"].tolist(),
                         "generated": [str(train["report"].iloc[j]) for j in nearest]})


NAMES = ("most_frequent", "retrieval")


def baseline_inputs(cfg: RunConfig, split: str, n_boot: int, max_samples: int | None) -> dict[str, Any]:
    """What the baselines' numbers depend on: the data, the split and its size, the encoder, the
    code and the machine. A stored copy that differs means the stored baselines are stale."""
    from .assets import sha256_of
    from .provenance import cpu_info, git_state

    return {"manifest_sha256": sha256_of(Path(cfg.data.manifest)), "split": split, "max_samples": max_samples,
            "n_boot": n_boot, "encoder": dataclasses.asdict(cfg.model.encoder),
            "code": git_state(Path(__file__).resolve().parents[1])["commit"], "cpu": cpu_info()}


def baselines_current(out_dir: str | Path, inputs: dict[str, Any]) -> bool:
    """True when <out_dir> holds both baselines, scored from exactly `inputs`."""
    stamp = Path(out_dir) / "inputs.json"
    return (stamp.is_file() and all((Path(out_dir) / n / "metrics.json").is_file() for n in NAMES)
            and json.loads(stamp.read_text()) == json.loads(json.dumps(inputs)))


def run_baselines(cfg: RunConfig, out_dir: str | Path, split: str = "test", n_boot: int = 1000,
                  max_samples: int | None = None) -> dict[str, dict[str, Any]]:
    """Score both baselines on a split; writes <out>/<name>/{generations,metrics}.* and
    <out>/inputs.json (what they were scored from, see `baselines_current`)."""
    manifest, encoder = load_manifest(cfg.data.manifest), build_encoder(cfg.model.encoder).eval()
    train, test = dataset_for(cfg, "train", manifest), dataset_for(cfg, split, manifest, max_samples)
    train_feats = pooled_features(encoder, train, cfg.data.eval_batch_size)
    test_feats = pooled_features(encoder, test, cfg.data.eval_batch_size)
    mode = most_frequent_report(train.df["report"])
    gens = {"most_frequent": pd.DataFrame({"id": test.df["id"].astype(str), "reference": test.df["report"],
                                           "generated": mode}),
            "retrieval": retrieval_generations(train_feats, test_feats, train.df, test.df)}
    results = {}
    for name, table in gens.items():
        result = score_generations(table, n_boot=n_boot, seed=cfg.train.seed)
        info = {"run": name, "split": split, "baseline": True, "encoder": cfg.model.encoder.name}
        write_results(Path(out_dir) / name, table, result, info)
        results[name] = {"metrics": result["metrics"], "ci95": result["ci"], "n": result["n"],
                         "stats": result["stats"]}
    inputs = baseline_inputs(cfg, split, n_boot, max_samples)
    (Path(out_dir) / "inputs.json").write_text(json.dumps(inputs, indent=1))
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
    shown = ("BLEU-4", "F1-RB-14-micro", "CIDEr")
    print(json.dumps({k: {m: round(v, 4) for m, v in r["metrics"].items() if m.startswith(shown)}
                      for k, r in res.items()}, indent=2))


if __name__ == "__main__":
    main()
