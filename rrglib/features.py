"""What training feeds the model: batches of studies, from images or from cached encoder features.

`cached_features` keeps a frozen encoder's features on disk; `pair_images` says which image each
training report is shown with (the image-blind controls); `Batcher` turns index lists into batches.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .assets import cache_dir
from .config import RunConfig
from .data import ReportCollator, ReportDataset, derangement


def feature_cache_path(cfg: RunConfig, manifest_file: Path, split: str, n: int) -> Path:
    """Where this split's frozen-encoder features live: keyed by encoder, manifest bytes and size."""
    enc = cfg.model.encoder
    key = json.dumps({
        "encoder": [enc.name, enc.pretrained, enc.image_size], "blind": cfg.model.image_blind,
        "manifest": hashlib.sha256(manifest_file.read_bytes()).hexdigest(), "split": split, "n": n,
    }, sort_keys=True)
    root = Path(cfg.train.feature_cache_dir) if cfg.train.feature_cache_dir else cache_dir() / "features"
    return root / f"{enc.name}-{split}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"


@torch.no_grad()
def encode_dataset(encode: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, batch_size: int,
                   desc: str = "encoding", show: bool = True) -> torch.Tensor:
    """`encode(images)` of every study in order, as float16 (N, tokens, C); `encode` is frozen."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        collate_fn=ReportCollator(None), generator=torch.Generator())
    chunks = [encode(b["images"]).half() for b in tqdm(loader, desc=desc, disable=not show)]
    return torch.cat(chunks)


def cached_features(model: torch.nn.Module, cfg: RunConfig, dataset: ReportDataset, manifest_file: Path,
                    split: str, accelerator: Accelerator) -> torch.Tensor:
    """This split's encoder features from the cache, computed once (on the main process)."""
    path = feature_cache_path(cfg, manifest_file, split, len(dataset))
    if accelerator.is_main_process and not path.is_file():
        model.encoder.eval()
        feats = encode_dataset(model.encode_images, dataset, cfg.data.eval_batch_size, f"caching {split} features")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.partial")  # two runs may fill one cache
        save_file({"features": feats}, str(tmp))
        os.replace(tmp, path)
    accelerator.wait_for_everyone()
    return load_file(str(path))["features"]


def image_order(pairing: str, n: int, seed: int) -> list[int]:
    """For each study, the index of the study whose image it is shown with."""
    if pairing == "own":
        return list(range(n))
    if pairing == "deranged":
        return derangement(n, seed).tolist()
    if pairing == "constant":
        return [int(np.random.default_rng(seed).integers(n))] * n
    raise ValueError(f"data.image_pairing must be one of own, deranged, constant; got {pairing!r}")


class PairedImages(Dataset):
    """A ReportDataset whose study i shows the image of study `order[i]`; reports and labels stay."""

    def __init__(self, dataset: ReportDataset, order: list[int]):
        self.dataset, self.order = dataset, order
        self.df, self.labels = dataset.df, dataset.labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return {"id": str(self.df["id"].iloc[idx]), "image": self.dataset[self.order[idx]]["image"],
                "report": str(self.df["report"].iloc[idx]), "labels": self.labels[idx]}


def pair_images(dataset: ReportDataset, pairing: str, seed: int) -> tuple[Dataset, list[int]]:
    """The dataset as training sees it under `data.image_pairing`, and its image order."""
    order = image_order(pairing, len(dataset), seed)
    return (dataset if pairing == "own" else PairedImages(dataset, order)), order


class Batcher:
    """Turns index lists into model-ready batches, from cached features or from images."""

    def __init__(self, dataset: ReportDataset | PairedImages, model: torch.nn.Module, num_workers: int = 0):
        self.dataset, self.num_workers, self.tokenize = dataset, num_workers, model.tokenize_reports
        self.features: torch.Tensor | None = None  # (N, tokens, C), row i = what study i is shown
        self._lengths: list[int] | None = None

    def lengths(self) -> list[int]:
        """Report tokens per study as the model sees them (truncation included), computed once."""
        if self._lengths is None:
            reports = [str(r) for r in self.dataset.df["report"]]
            self._lengths = self.tokenize(reports)["attention_mask"].sum(1).tolist()
        return self._lengths

    def batches(self, index_lists: list[list[int]], use_features: bool) -> Iterator[dict[str, Any]]:
        if use_features and self.features is not None:
            df = self.dataset.df
            for idx in index_lists:
                reports = [str(df["report"].iloc[i]) for i in idx]
                tok = self.tokenize(reports)
                yield {"features": self.features[idx].float(), "labels": self.dataset.labels[idx],
                       "report_input_ids": tok["input_ids"], "report_attention_mask": tok["attention_mask"],
                       "reports": reports, "ids": [str(df["id"].iloc[i]) for i in idx]}
        else:
            # a private generator: creating a DataLoader must not draw from the global RNG,
            # or a resumed run's dropout masks would drift from the uninterrupted run's
            yield from DataLoader(self.dataset, batch_sampler=index_lists, num_workers=self.num_workers,
                                  collate_fn=ReportCollator(self.tokenize), generator=torch.Generator())


def model_inputs(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The tensors of a batch that `ReportGenerator.forward` takes, on `device`."""
    keys = ("report_input_ids", "report_attention_mask", "images", "features", "labels")
    return {k: batch[k].to(device) for k in keys if k in batch}
