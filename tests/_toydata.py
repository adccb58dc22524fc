"""A tiny image-report dataset whose reports are fully determined by the image.

Two findings: a bright blob in the middle (cardiomegaly) and a bright band at the bottom
(pleural effusion). Small enough for training tests that take seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from rrglib.labels import CHEXPERT_OBSERVATIONS

SENTENCES = {
    (0, 0): "The heart size is normal. There is no pleural effusion.",
    (1, 0): "The heart is enlarged. There is no pleural effusion.",
    (0, 1): "The heart size is normal. There is a pleural effusion.",
    (1, 1): "The heart is enlarged. There is a pleural effusion.",
}


def make_toy_manifest(root: Path, n_train: int = 32, n_val: int = 8, n_test: int = 8,
                      size: int = 64, seed: int = 0) -> Path:
    """Write images/ and manifest.csv under root; returns the manifest path."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    splits = ["train"] * n_train + ["validate"] * n_val + ["test"] * n_test
    for i, split in enumerate(splits):
        cardio, effusion = i % 2, (i // 2) % 2
        img = 0.2 + 0.05 * rng.standard_normal((size, size))
        radius = 0.28 if cardio else 0.12
        img += 0.6 * (((yy - 0.5) ** 2 + (xx - 0.5) ** 2) < radius ** 2)
        if effusion:
            img += 0.6 * (yy > 0.8)
        arr = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        path = f"images/case{i:03d}.png"
        Image.fromarray(arr).save(root / path)
        labels = {c: np.nan for c in CHEXPERT_OBSERVATIONS}
        labels["Cardiomegaly"] = float(cardio)
        labels["Pleural Effusion"] = float(effusion)
        labels["No Finding"] = 1.0 if not (cardio or effusion) else np.nan
        report = SENTENCES[(cardio, effusion)]
        rows.append({"id": f"case{i:03d}", "split": split, "image_path": path, "findings": report,
                     "impression": "", "report": report, **labels})
    df = pd.DataFrame(rows)
    for c in CHEXPERT_OBSERVATIONS:
        df[c] = df[c].map(lambda v: "" if pd.isna(v) else str(int(v)))
    df.to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def toy_sources(n: int = 20) -> pd.DataFrame:
    """A stand-in for the IU reports table SynthCXR draws from: half normal, half enlarged."""
    rows = []
    for i in range(n):
        labels = {c: np.nan for c in CHEXPERT_OBSERVATIONS}
        if i % 2:
            labels["Cardiomegaly"] = 1.0
        else:
            labels["No Finding"] = 1.0
        text = "The heart is enlarged." if i % 2 else "The heart size is normal."
        rows.append({"id": f"CXR{i + 1}", "findings": text, "impression": "", "report": text,
                     **labels})
    return pd.DataFrame(rows)


def smoke_model(attn: str = "eager", llm: str = "tiny-gpt2"):
    """The smoke profile's model (tiny random LLM), seeded, in eval mode."""
    import torch

    from rrglib.config import load_config
    from rrglib.model import ReportGenerator

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml").model
    cfg.llm.name, cfg.llm.attn_implementation = llm, attn
    torch.manual_seed(0)
    return ReportGenerator(cfg).eval()
