"""SynthCXR: the offline demo dataset, rendered so that the report is visible in the image.

    python -m data_prep.demo --out data/demo [--n N] [--seed S] [--positive-fraction F]
        [--oversample-rare] [--text grammar|iu] [--image-size 256]

Each case takes the 14-label vector of one real IU X-Ray report (our labeler on FINDINGS +
IMPRESSION), so prevalence and co-occurrence are real; side, severity and devices are
drawn. The image shows a sign for every positive (faint for every uncertain) label, and the
grammar report states exactly those labels, plus the report's negatives. It is synthetic
and always called so. `--text iu` pairs each image with the real IU report it came from,
the ungrounded control.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import textwrap
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from data_prep.common import (
    LOCK_NAME,
    attach_labels,
    build_lock,
    fraction,
    int_at_least,
    one_line_errors,
    seeded_split,
    split_counts,
    write_manifest,
)
from data_prep.iu_reports import parse_reports, reports_path
from data_prep.iu_xray import report_text
from data_prep.synthcxr import Finding, Patient, draw_attributes, render, write_report
from rrglib.data import META_NAME, MIN_IMAGE_SIDE, SPLITS
from rrglib.labels import CHEXPERT_OBSERVATIONS

FINDING_NAMES = tuple(o for o in CHEXPERT_OBSERVATIONS if o != "No Finding")
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
# Written first into every folder this builder renders into: only such a folder (or an
# empty one) is ever written again, so a real dataset is never overwritten by mistake.
OWNER_MARKER = ".synthcxr"


def source_reports(reports_tgz: str | Path | None = None) -> pd.DataFrame:
    """IU reports with text, their 14 labels and target text (the iu_xray rules)."""
    df = parse_reports(reports_tgz or reports_path())
    picked = [
        report_text(f, i, False) for f, i in zip(df["findings"], df["impression"], strict=True)
    ]
    df["report"] = [p[0] for p in picked]
    df = df[df["report"] != ""].reset_index(drop=True)
    return attach_labels(df, ("findings", "impression"), overwrite=True)


def is_abnormal(labels: pd.DataFrame) -> np.ndarray:
    """A case 'has a finding' when any observation but No Finding is positive or uncertain."""
    vals = labels[list(FINDING_NAMES)].to_numpy(dtype=float)
    return np.isin(vals, (1.0, -1.0)).any(axis=1)


def _cycle(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n items taking the pool in seeded random order, reshuffled each time it runs out."""
    if n <= 0 or len(pool) == 0:
        return np.array([], dtype=int)
    reps = math.ceil(n / len(pool))
    return np.concatenate([rng.permutation(pool) for _ in range(reps)])[:n]


def rare_weights(labels: pd.DataFrame) -> np.ndarray:
    """Per report: max over its findings of prevalence^-1/2 (normal reports: theirs)."""
    vals = np.isin(labels[list(FINDING_NAMES)].to_numpy(dtype=float), (1.0, -1.0))
    prev = np.clip(vals.mean(axis=0), 1.0 / len(vals), None)
    abnormal = vals.any(axis=1)
    w = np.where(vals, prev[None, :] ** -0.5, 0.0).max(axis=1)
    w[~abnormal] = max(float((~abnormal).mean()), 1.0 / len(vals)) ** -0.5
    return w


def sample_cases(
    labels: pd.DataFrame,
    splits: list[str],
    n: int,
    seed: int,
    positive_fraction: float | None = None,
    oversample_rare: bool = False,
) -> list[tuple[int, str]]:
    """(source row, split) for n cases; splits keep 7:1:2, sources never cross splits."""
    rng = np.random.default_rng([seed, 7])
    splits_arr = np.asarray(splits)
    abnormal = is_abnormal(labels)
    weights = rare_weights(labels) if oversample_rare else None
    quotas = [round(n * f) for f in SPLIT_FRACTIONS[:2]]
    quotas.append(n - sum(quotas))
    out: list[tuple[int, str]] = []
    for split, quota in zip(SPLITS, quotas, strict=True):
        rows = np.flatnonzero(splits_arr == split)
        groups = [(rows, quota)]
        if positive_fraction is not None:
            n_abn = round(quota * positive_fraction)
            groups = [(rows[abnormal[rows]], n_abn), (rows[~abnormal[rows]], quota - n_abn)]
        for pool, k in groups:
            if k > 0 and len(pool) == 0:
                raise ValueError(f"no source reports to draw {k} {split} cases from")
            if weights is not None and split == "train" and k > 0:
                p = weights[pool] / weights[pool].sum()
                picked = rng.choice(pool, size=k, replace=True, p=p)
            else:
                picked = _cycle(pool, k, rng)
            out += [(int(r), split) for r in picked]
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def make_case(task: dict[str, Any]) -> dict[str, Any]:
    """Render one case and return its manifest row (runs in a worker process)."""
    i, seed = task["index"], task["seed"]
    rng = np.random.default_rng([seed, i, 0])
    labels: dict[str, float] = task["labels"]
    findings = [
        Finding(n, v, draw_attributes(n, rng))
        for n, v in labels.items()
        if n in FINDING_NAMES and v in (1.0, -1.0)
    ]
    negatives = [n for n, v in labels.items() if n in FINDING_NAMES and v == 0.0]
    patient = Patient.draw(np.random.default_rng([seed, i, 1]))
    image = render(task["image_size"], patient, findings)
    if task["text"] == "grammar":
        fnd, imp = write_report(findings, negatives, rng)
        report = fnd
    else:
        fnd, imp, report = task["iu_findings"], task["iu_impression"], task["iu_report"]
    rel = f"images/{task['id']}.png"
    Image.fromarray(image, mode="L").save(Path(task["out"]) / rel, optimize=False, compress_level=1)
    attrs = {f.name: f.attrs for f in findings if f.attrs}
    return {
        "id": task["id"],
        "split": task["split"],
        "image_path": rel,
        "findings": fnd,
        "impression": imp,
        "report": report,
        "source_id": task["source_id"],
        "attributes": json.dumps(attrs, sort_keys=True),
        **labels,
    }


def contact_sheet(df: pd.DataFrame, root: Path, path: Path, tile: int = 256) -> list[str]:
    """One case per observation (fewest other findings) with its report; returns ids shown."""
    try:
        font = ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1: bitmap font only
        font = ImageFont.load_default()
    n_pos = np.isin(df[list(FINDING_NAMES)].to_numpy(dtype=float), (1.0,)).sum(axis=1)
    panels = []
    for obs in CHEXPERT_OBSERVATIONS:
        rows = np.flatnonzero(df[obs].to_numpy(dtype=float) == 1.0)
        if len(rows) == 0:
            continue
        best = rows[np.argmin(n_pos[rows])]
        panels.append((obs, df.iloc[best]))
    cols, text_h = 4, 150
    rows_n = math.ceil(len(panels) / cols)
    sheet = Image.new("L", (cols * tile, rows_n * (tile + text_h)), 255)
    draw = ImageDraw.Draw(sheet)
    for k, (obs, row) in enumerate(panels):
        x0, y0 = (k % cols) * tile, (k // cols) * (tile + text_h)
        img = Image.open(root / row["image_path"]).convert("L").resize((tile, tile))
        sheet.paste(img, (x0, y0))
        text = f"[{obs}] {row['id']}\n" + "\n".join(textwrap.wrap(str(row["report"]), 44)[:9])
        draw.multiline_text((x0 + 4, y0 + tile + 3), text, fill=0, font=font, spacing=2)
    sheet.save(path)
    return [str(r["id"]) for _, r in panels]


def is_ours(out: Path) -> bool:
    """True when out/ was created by this builder (marker, or the meta of an older build)."""
    if (out / OWNER_MARKER).is_file():
        return True
    try:
        return json.loads((out / META_NAME).read_text()).get("builder") == "data_prep.demo"
    except (OSError, ValueError, AttributeError):
        return False


class ForeignDataset(FileExistsError):
    """10_data was asked to build synthetic data into a folder that holds something else."""


def build_state(out: str | Path, **wanted: Any) -> str:
    """"current" if out/ holds a build of ours with the `wanted` options (n, seed, image_size,
    positive_fraction), else "build"; refuses (ForeignDataset) a folder this builder did not
    create, before anything is written: 10_data never renders into a real dataset."""
    out = Path(out)
    if not out.exists() or (out.is_dir() and not out.is_symlink() and not any(out.iterdir())):
        return "build"
    if out.is_symlink() or (out / "images").is_symlink() or not is_ours(out):
        raise ForeignDataset(
            f"{out} is not a SynthCXR folder built by data_prep.demo (no {OWNER_MARKER} or "
            f"{META_NAME}); 10_data will not write into it: pass -p build_demo=false to use it "
            "as it is, or choose a new data_dir for the synthetic data")
    try:
        meta = json.loads((out / META_NAME).read_text())
    except (OSError, ValueError):
        meta = {}
    meta = meta if isinstance(meta, dict) else {}
    recorded = {**(meta.get("options") or {}), "seed": meta.get("seed")}  # seed beside options
    return "current" if all(recorded.get(k) == v for k, v in wanted.items()) else "build"


def check_output_dir(out: Path) -> None:
    """Refuse a folder that holds anything not rendered by this builder; read-only."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder; choose another --out.")
    if not out.is_dir() or is_ours(out):
        foreign = []
    else:
        foreign = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
    if foreign:
        raise FileExistsError(
            f"{out} is not empty and was not built by data_prep.demo (it holds "
            f"{', '.join(foreign[:4])}{', ...' if len(foreign) > 4 else ''}); SynthCXR never "
            "writes into another dataset. Choose an empty or new --out (e.g. data/demo)."
        )
    if (out / "images").is_symlink():
        raise FileExistsError(
            f"{out / 'images'} is a link to another folder (a real dataset's images); "
            "SynthCXR never writes through it. Choose an empty or new --out."
        )


def check_options(n: int, image_size: int, positive_fraction: float | None,
                  workers: int | None, text: str) -> None:
    """Raise ValueError naming the option and its valid range."""
    if text not in ("grammar", "iu"):
        raise ValueError(f"--text must be grammar or iu, got {text!r}")
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    if image_size < MIN_IMAGE_SIDE:
        raise ValueError(f"--image-size must be >= {MIN_IMAGE_SIDE}, got {image_size}")
    if positive_fraction is not None and not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"--positive-fraction must be within [0, 1], got {positive_fraction}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")


def build(
    out: str | Path,
    n: int = 3955,
    seed: int = 0,
    positive_fraction: float | None = None,
    oversample_rare: bool = False,
    text: str = "grammar",
    image_size: int = 256,
    workers: int | None = None,
    reports_tgz: str | Path | None = None,
    sources: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Render SynthCXR into out/ (images/, manifest.csv, manifest.meta.json, contact_sheet.png).

    out/ must be new, empty or an earlier SynthCXR build; one build at a time per folder.
    """
    check_options(n, image_size, positive_fraction, workers, text)
    out = Path(out)
    check_output_dir(out)  # before the lock: not even a lock file goes into a foreign folder
    with build_lock(out):
        (out / OWNER_MARKER).write_text("rendered by data_prep.demo\n")
        return _render(out, n, seed, positive_fraction, oversample_rare, text, image_size,
                       workers, reports_tgz, sources)


def _render(
    out: Path,
    n: int,
    seed: int,
    positive_fraction: float | None,
    oversample_rare: bool,
    text: str,
    image_size: int,
    workers: int | None,
    reports_tgz: str | Path | None,
    sources: pd.DataFrame | None,
) -> pd.DataFrame:
    start = time.perf_counter()
    (out / "images").mkdir(parents=True, exist_ok=True)
    src = sources if sources is not None else source_reports(reports_tgz)
    splits = seeded_split(src["id"].tolist(), seed, SPLIT_FRACTIONS)
    picks = sample_cases(src, splits, n, seed, positive_fraction, oversample_rare)
    width = max(5, len(str(n - 1)))
    tasks = []
    for i, (r, split) in enumerate(picks):
        row = src.iloc[r]
        labels = {o: float(row[o]) for o in CHEXPERT_OBSERVATIONS}
        tasks.append(
            {
                "index": i,
                "seed": seed,
                "id": f"synth{i:0{width}d}",
                "split": split,
                "labels": labels,
                "image_size": image_size,
                "text": text,
                "out": str(out),
                "source_id": row["id"],
                "iu_findings": row["findings"],
                "iu_impression": row["impression"],
                "iu_report": row["report"],
            }
        )
    workers = workers or min(os.cpu_count() or 1, 4)
    if workers > 1 and len(tasks) > 50:
        with get_context("spawn" if os.name == "nt" else "fork").Pool(workers) as pool:
            rows = pool.map(make_case, tasks, chunksize=32)
    else:
        rows = [make_case(t) for t in tasks]
    df = pd.DataFrame(rows)
    real_share = float(is_abnormal(src).mean())
    meta = {
        "builder": "data_prep.demo",
        "name": "SynthCXR (synthetic; not real radiographs)",
        "seed": seed,
        "options": {
            "seed": seed,
            "n": n,
            "positive_fraction": positive_fraction,
            "oversample_rare": oversample_rare,
            "text": text,
            "image_size": image_size,
        },
        "sampling": {
            "source": "IU X-Ray reports (torchxrayvision NLMCXR_reports.tgz), labels by rrglib.labeler",
            "split": "seeded 7:1:2 by source report; a report never appears in two splits",
            "positive_fraction": "real proportion"
            if positive_fraction is None
            else positive_fraction,
            "oversample_rare": (
                "train cases drawn with replacement, probability proportional to the max over "
                "the report's findings of prevalence^-1/2; validate/test keep real prevalence"
            )
            if oversample_rare
            else "off",
            "source_share_with_finding": round(real_share, 4),
        },
        "labels": "true labels of the rendered case (= the source report's labeler labels)",
        "counts": {
            "studies": len(df),
            "split": split_counts(df),
            "with_finding": int(is_abnormal(df).sum()),
            "positive": {o: int((df[o] == 1.0).sum()) for o in CHEXPERT_OBSERVATIONS},
            "uncertain": {o: int((df[o] == -1.0).sum()) for o in CHEXPERT_OBSERVATIONS},
            "sources_without_text_dropped": int(3955 - len(src)) if sources is None else 0,
        },
    }
    path = write_manifest(df, out, meta)
    shown = contact_sheet(df, out, out / "contact_sheet.png")
    seconds = time.perf_counter() - start
    meta["build_seconds"] = round(seconds, 1)
    meta["contact_sheet"] = shown
    (out / "manifest.meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(
        f"SynthCXR: {len(df)} cases {split_counts(df)} at {image_size} px, text={text}, "
        f"{seconds:.1f} s"
    )
    print(f"  images:        {out / 'images'}")
    print(f"  manifest:      {path}")
    print(f"  meta:          {out / 'manifest.meta.json'}")
    print(f"  contact sheet: {out / 'contact_sheet.png'}")
    return df


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="data/demo")
    ap.add_argument(
        "--n", type=int_at_least(1), default=3955,
        help="number of cases (default: one per IU report)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--positive-fraction",
        type=fraction,
        default=None,
        help="fraction of cases with at least one finding (default: the real one)",
    )
    ap.add_argument(
        "--oversample-rare", action="store_true", help="oversample rare findings in train"
    )
    ap.add_argument("--text", choices=("grammar", "iu"), default="grammar")
    ap.add_argument("--image-size", type=int_at_least(MIN_IMAGE_SIDE), default=256)
    ap.add_argument(
        "--workers", type=int_at_least(1), default=None, help="processes (default: CPU count, max 4)"
    )
    ap.add_argument(
        "--reports-tgz", default=None, help="NLMCXR_reports.tgz (default: torchxrayvision's)"
    )
    args = ap.parse_args(argv)
    with one_line_errors("data_prep.demo"):
        build(
            args.out,
            args.n,
            args.seed,
            args.positive_fraction,
            args.oversample_rare,
            args.text,
            args.image_size,
            args.workers,
            args.reports_tgz,
        )


if __name__ == "__main__":
    main()
