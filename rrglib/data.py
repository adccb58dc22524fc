"""Manifests, image loading and batching: the only data path that training reads.

A manifest is `manifest.csv`, one row per study, image paths relative to its folder (the dataset
root). It is validated in full before training starts, so a bad dataset fails in seconds."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from rrglib.labels import CHEXPERT_OBSERVATIONS

if TYPE_CHECKING:
    from rrglib.config import RunConfig

# All read as strings, so that ids such as "00012" or "1e5" survive the CSV.
REQUIRED_COLUMNS: tuple[str, ...] = (
    "id", "split", "image_path", "findings", "impression", "report")
SPLITS: tuple[str, ...] = ("train", "validate", "test")
META_NAME = "manifest.meta.json"
# What a missing value becomes when a table passes through pandas or a spreadsheet.
PLACEHOLDER_TEXTS = frozenset({"nan", "none", "null", "n/a", "na"})
# Below this many pixels a side there is no anatomy left to see (encoders take 224 px).
MIN_IMAGE_SIDE = 16
_REBUILD = "rebuild it with its data_prep builder."


class ManifestError(ValueError):
    """A manifest that cannot be trained on; the message says which file, rows and fix."""


class ImageLoadError(OSError):
    """An image file that exists but cannot be decoded."""


def _rows(ids: Sequence[Any], limit: int = 5) -> str:
    ids = [str(i) for i in ids]
    return ", ".join(ids[:limit]) + (f" (+{len(ids) - limit} more)" if len(ids) > limit else "")


def _check_ids_and_splits(df: pd.DataFrame, source: str) -> None:
    ids = df["id"].str.strip()
    if (ids == "").any():
        rows = [int(i) + 2 for i in np.flatnonzero(ids == "")]  # +2: header line, 1-based
        raise ManifestError(f"{source}: empty id on line(s) {_rows(rows)}; every study needs an "
                            "id.")
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        raise ManifestError(f"{source}: duplicate id(s) {_rows(sorted(set(dup)))}; ids must be "
                            "unique (one row per study).")
    bad = ~df["split"].isin(SPLITS)
    if bad.any():
        raise ManifestError(
            f"{source}: unknown split value(s) {sorted(set(df.loc[bad, 'split']))!r} for id(s) "
            f"{_rows(df.loc[bad, 'id'])}; use one of {', '.join(SPLITS)} ('val'/'valid' must be "
            "written 'validate').")


def _check_reports(df: pd.DataFrame, source: str) -> None:
    text = df["report"].str.strip()
    empty = (text == "") | text.str.lower().isin(PLACEHOLDER_TEXTS)
    if empty.any():
        shown = [f"{sid} ({t!r})" for sid, t in zip(df.loc[empty, "id"], text[empty], strict=True)]
        raise ManifestError(
            f"{source}: empty target text in column 'report' for id(s) {_rows(shown)} "
            "('nan'/'None' are what a missing value becomes in a spreadsheet); drop these "
            "studies or fill their report.")


def _check_image_paths(df: pd.DataFrame, root: Path, source: str, check_images: bool) -> None:
    paths = df["image_path"].str.strip()
    if (paths == "").any():
        ids = _rows(df.loc[paths == "", "id"])
        raise ManifestError(f"{source}: empty image_path for id(s) {ids}.")
    escaping, absent, present = [], [], []
    for sid, rel in zip(df["id"], paths, strict=True):
        # Lexical check, not resolve(): an images folder may be a symlink to elsewhere.
        full = Path(os.path.normpath(root / rel))
        if Path(rel).is_absolute() or not full.is_relative_to(root):
            escaping.append(f"{sid} ({rel})")
        elif check_images and not full.is_file():
            absent.append(f"{sid} ({rel})")
        else:
            present.append((sid, full))
    if escaping:
        raise ManifestError(
            f"{source}: column image_path has path(s) outside the dataset root {root}: "
            f"{_rows(escaping)}; image paths must be relative to the manifest's folder "
            "and stay inside it (move or link the images under it).")
    if absent:
        raise ManifestError(
            f"{source}: column image_path names {len(absent)} image(s) that do not exist under "
            f"{root}: {_rows(absent)}; check that the images were extracted there, or "
            "rebuild the manifest.")
    if not check_images:
        return
    # A fast pass over the headers, so a bad file fails the run before the model loads. Threads:
    # the pass is file-open latency, which overlaps well on network disks.
    with ThreadPoolExecutor(max_workers=8) as pool:
        problems = list(pool.map(image_header_problem, [p for _, p in present], chunksize=64))
    bad = [f"{sid} ({p}: {why})" for (sid, p), why in zip(present, problems, strict=True) if why]
    if bad:
        raise ManifestError(
            f"{source}: {len(bad)} image(s) cannot be used: {_rows(bad, 3)}; re-extract or "
            "re-download these files, or drop their rows from the manifest.")


def image_header_problem(path: Path) -> str | None:
    """Why an image file cannot serve as a study image (reading its header only), or None."""
    if path.stat().st_size == 0:
        return "empty file"
    if _is_dicom(path):
        return None  # decoding needs pydicom; a broken DICOM is named when first read
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError,
            SyntaxError) as err:
        return f"not a readable image ({err})"
    if min(width, height) < MIN_IMAGE_SIDE:
        return f"{width}x{height} px, smaller than {MIN_IMAGE_SIDE} px a side"
    return None


def _check_overlap(df: pd.DataFrame, source: str, allow_overlap: bool) -> int:
    """Raise when one image is in two splits; return how many test reports occur in train."""
    paths = df["image_path"].str.strip().map(os.path.normpath)
    shared = df.groupby(paths)["split"].transform("nunique") > 1
    if shared.any() and not allow_overlap:
        shown = [f"{sid}={sp} ({p})" for sid, sp, p in
                 zip(df.loc[shared, "id"], df.loc[shared, "split"], paths[shared], strict=True)]
        raise ManifestError(
            f"{source}: {int(shared.sum())} row(s) share an image with a row of another split: "
            f"{_rows(shown, 4)}; the test score would measure memory, not generation. Put all "
            "rows of one image in one split (split by study or patient), or pass "
            "allow_overlap=True if this is intended.")
    # Identical report text across splits is common and legitimate (normal studies read
    # alike), so it is counted for the data notebook, not refused.
    norm = df["report"].str.lower().str.split().str.join(" ")
    return int(norm[df["split"] == "test"].isin(set(norm[df["split"] == "train"])).sum())


def _check_labels(df: pd.DataFrame, source: str) -> None:
    """Label columns become floats; anything but 1, 0, -1 or blank is refused."""
    for col in [c for c in CHEXPERT_OBSERVATIONS if c in df.columns]:
        raw, values = df[col], pd.to_numeric(df[col], errors="coerce")
        not_number = values.isna() & raw.notna() & (raw.astype(str).str.strip() != "")
        bad = not_number | (values.notna() & ~values.isin((1.0, 0.0, -1.0)))
        if bad.any():
            shown = [f"{sid}={v!r}" for sid, v in zip(df.loc[bad, "id"], raw[bad], strict=True)]
            raise ManifestError(
                f"{source}: label column {col!r} has value(s) other than 1, 0, -1 or blank: "
                f"{_rows(shown)}; write positive 1, negative 0, uncertain -1, not mentioned blank.")
        df[col] = values.astype(float)


def load_manifest(path: str | Path, check_images: bool = True,
                  allow_overlap: bool = False) -> pd.DataFrame:
    """Read and validate `manifest.csv` (or a folder holding one); raises ManifestError.
    With `check_images`, every image must exist with a readable header of >= MIN_IMAGE_SIDE px.
    `attrs["test_reports_in_train"]` counts test reports whose text also occurs in train. Only
    `image_path` is read (one frontal view per study, as in the paper); view columns are carried."""
    path = Path(path)
    path = path / "manifest.csv" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist; build one first, e.g. "
                                "`python -m data_prep.demo --out data/demo`.")
    if path.stat().st_size == 0:
        raise ManifestError(f"{path}: the file is empty (0 bytes), probably from an interrupted "
                            f"build; {_REBUILD}")
    try:
        df = pd.read_csv(path, dtype={c: str for c in REQUIRED_COLUMNS}, keep_default_na=False,
                         na_values={c: [""] for c in CHEXPERT_OBSERVATIONS})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ManifestError(f"{path}: not a readable CSV ({err}); {_REBUILD}") from err
    source, root = str(path), path.parent.resolve()
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(
            f"{source}: missing column(s) {', '.join(missing)}; a manifest needs "
            f"{', '.join(REQUIRED_COLUMNS)} (plus optional label columns). "
            "Rebuild it with one of the data_prep builders.")
    if len(df) == 0:
        raise ManifestError(f"{source}: no studies (a header without rows); {_REBUILD}")
    for col in REQUIRED_COLUMNS:
        df[col] = df[col].fillna("").astype(str)
    _check_ids_and_splits(df, source)
    _check_reports(df, source)
    _check_image_paths(df, root, source, check_images)
    df.attrs["test_reports_in_train"] = _check_overlap(df, source, allow_overlap)
    _check_labels(df, source)
    df.attrs["root"] = str(root)
    return df


def _scale_real_range(arr: np.ndarray) -> np.ndarray:
    """Map an image to [0, 1] by its own min and max (12-bit data in 16-bit containers)."""
    arr = arr.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    return np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo)


def _read_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom
    except ImportError as err:
        raise ImportError(f"{path} is DICOM; install pydicom (`pip install pydicom` or the "
                          "`dicom` extra).") from err
    ds = pydicom.dcmread(str(path))
    arr = ds.pixel_array.astype(np.float32)
    if arr.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:
        arr = arr[0]  # multi-frame: first frame
    slope, intercept = getattr(ds, "RescaleSlope", 1) or 1, getattr(ds, "RescaleIntercept", 0) or 0
    arr = _scale_real_range(arr * float(slope) + float(intercept))
    # MONOCHROME1 stores bone dark; we want bone bright
    return 1.0 - arr if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1" else arr


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def read_image_array(path: str | Path) -> np.ndarray:
    """Decode an image to float32 in [0, 1], shape (H, W) for grayscale or (H, W, 3)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        if _is_dicom(path):
            return _read_dicom(path)
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)  # phone/scanner JPEGs may carry a rotation
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                return _scale_real_range(np.asarray(img))
            if img.mode in ("L", "LA", "1"):
                return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
            # RGBA: the alpha channel of a radiograph carries no image content; drop it.
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
            return rgb[..., 0] if (rgb == rgb[..., :1]).all() else rgb  # gray stored as RGB
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ImageLoadError(f"cannot decode image {path}: {err}; the file is corrupt or not an "
                             "image (re-extract or re-download it).") from err
    except Exception as err:  # pydicom raises its own types for broken files
        raise ImageLoadError(f"cannot decode image {path}: {err}") from err


def load_image(path: str | Path, image_size: int, mean: Sequence[float],
               std: Sequence[float]) -> torch.Tensor:
    """One image file -> normalised float tensor (3, image_size, image_size): the shorter side
    resized, center-cropped, gray replicated to 3 channels. No augmentation: the paper trains on
    the plain frontal image, and a horizontal flip would swap the left and right the report names.
    """
    t = torch.from_numpy(np.ascontiguousarray(read_image_array(path), dtype=np.float32))
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    h, w = t.shape[-2:]
    scale = image_size / min(h, w)
    nh, nw = max(image_size, round(h * scale)), max(image_size, round(w * scale))
    t = F.interpolate(t[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - image_size) // 2, (nw - image_size) // 2
    t = t[0, :, top : top + image_size, left : left + image_size].expand(3, -1, -1)
    m, s = (torch.tensor(v, dtype=torch.float32).view(-1, 1, 1) for v in (mean, std))
    return ((t - m) / s).contiguous()


class ReportDataset(Dataset):
    """Studies of one split: dict(id, image (3, S, S), report, labels (14,) with NaN)."""

    def __init__(self, manifest: pd.DataFrame | str | Path, split: str | None, image_size: int,
                 mean: Sequence[float], std: Sequence[float],
                 max_samples: int | None = None) -> None:
        if not isinstance(manifest, pd.DataFrame):
            manifest = load_manifest(manifest)
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples must be None (all) or >= 1, got {max_samples}")
        if "root" not in manifest.attrs:
            raise ValueError("the manifest DataFrame was not read by load_manifest (no image root)")
        self.root = Path(manifest.attrs["root"])
        df = manifest if split is None else manifest[manifest["split"] == split]
        self.df = df.iloc[:max_samples].reset_index(drop=True)
        self.split, self.image_size = split, image_size
        self.mean, self.std = tuple(mean), tuple(std)
        labels = self.df.reindex(columns=list(CHEXPERT_OBSERVATIONS))  # absent columns: NaN
        self.labels = torch.tensor(labels.to_numpy(np.float32))

    def __len__(self) -> int:
        return len(self.df)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        row = self.df.iloc[idx]
        image = load_image(self.root / row["image_path"], self.image_size, self.mean, self.std)
        return {"id": str(row["id"]), "image": image, "report": str(row["report"]),
                "labels": self.labels[idx]}


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A seeded permutation with no fixed point (one cycle through all n): every study gets
    another study's image. Used by the deranged-pairs control and the shuffled-image checks."""
    if n < 2:
        raise ValueError("a deranged pairing needs at least two studies")
    perm = np.random.default_rng(seed).permutation(n)
    return np.roll(perm, 1)[np.argsort(perm)]  # perm[i] -> perm[i-1]: never i itself


def dataset_for(cfg: RunConfig, split: str, manifest: pd.DataFrame | None = None,
                max_samples: int | None = None) -> ReportDataset:
    """The dataset of one split as a run config defines it (size, normalisation, sample cap).
    `max_samples` overrides the config's cap; pass `manifest` to reuse one already loaded."""
    from rrglib.encoder import ENCODERS  # the encoder's class holds its normalisation

    if max_samples is None:
        max_samples = cfg.data.max_train_samples if split == "train" else cfg.data.max_eval_samples
    enc = ENCODERS[cfg.model.encoder.name]
    return ReportDataset(manifest if manifest is not None else load_manifest(cfg.data.manifest),
                         split, cfg.model.encoder.image_size, enc.mean, enc.std, max_samples)


class ReportCollator:
    """Stack images and labels; tokenize the reports with the model's tokenize function."""

    def __init__(self, tokenize_fn: Callable[[list[str]], dict[str, torch.Tensor]] | None) -> None:
        self.tokenize_fn = tokenize_fn

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        reports = [it["report"] for it in items]
        batch = {"ids": [it["id"] for it in items], "reports": reports,
                 "images": torch.stack([it["image"] for it in items]),
                 "labels": torch.stack([it["labels"] for it in items]).float()}
        if self.tokenize_fn is not None:
            tok = self.tokenize_fn(reports)
            batch["report_input_ids"] = tok["input_ids"]
            batch["report_attention_mask"] = tok["attention_mask"]
        return batch
