"""IU X-Ray (OpenI, Indiana University) -> manifest.

    python -m data_prep.iu_xray --out data/iu_xray [--reports-tgz PATH] [--images DIR] [--download]

Reports come from `NLMCXR_reports.tgz` (shipped inside the torchxrayvision wheel, or given by
path); images from the official `NLMCXR_png` folder when present. Rules, stated once:
- target text: FINDINGS; a report without FINDINGS uses its IMPRESSION instead
  (`report_source` says which; `--findings-only` drops them); neither -> dropped, counted.
- frontal view: the study's images with View Position PA, then AP, in torchxrayvision's
  `nlmcxr_dicom_metadata.csv.gz`; images it marks lateral are never chosen; when it knows no
  frontal view, the first `parentImage` of the XML (IU lists the frontal view first).
- split: seeded 7:1:2 by study over all reports (stable whether or not images are present).
- MeSH tags kept (`mesh_major`, `mesh_automatic`, ';'-joined); 14 labels from our labeler.
Without images, only `iu_reports.csv` (a reports table, not a training manifest) is written.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from data_prep.common import (
    attach_labels,
    build_lock,
    extract,
    fetch,
    one_line_errors,
    require_rows,
    seeded_split,
    split_counts,
    write_manifest,
)
from data_prep.iu_reports import parse_reports, reports_path, torchxrayvision_data

OPENI_BASE = "https://openi.nlm.nih.gov/imgs/collections"
ARCHIVES = ("NLMCXR_png.tgz", "NLMCXR_reports.tgz")
FRONTAL = ("PA", "AP")
LATERAL = ("LL", "RL", "LATERAL", "LARGE LATERAL")
REPORTS_TABLE = "iu_reports.csv"


def load_view_positions(path: str | Path | None = None) -> dict[str, str]:
    """imageid -> View Position from torchxrayvision's IU DICOM metadata (empty if absent)."""
    path = Path(path) if path else torchxrayvision_data("nlmcxr_dicom_metadata.csv.gz")
    if path is None or not Path(path).is_file():
        return {}
    meta = pd.read_csv(path, usecols=["imageid", "View Position"], dtype=str).fillna("")
    return dict(zip(meta["imageid"], meta["View Position"].str.upper().str.strip(), strict=True))


def choose_frontal(image_ids: Iterable[str], views: dict[str, str]) -> tuple[str, str]:
    """(image id, rule used) of the frontal view; ("", reason) when there is none."""
    ids = [i for i in image_ids if i]
    for wanted in FRONTAL:
        for i in ids:
            if views.get(i) == wanted:
                return i, f"metadata {wanted}"
    rest = [i for i in ids if views.get(i, "") not in LATERAL]
    if rest:
        return rest[0], "first listed"
    return "", "no frontal image" if ids else "no image"


def report_text(findings: str, impression: str, findings_only: bool) -> tuple[str, str]:
    """(target text, its source) by the stated rule."""
    if findings:
        return findings, "findings"
    if impression and not findings_only:
        return impression, "impression"
    return "", "none"


def download(
    out: Path, base_url: str = OPENI_BASE, names: Iterable[str] = ARCHIVES
) -> dict[str, Path]:
    """Fetch and unpack the official OpenI archives into out/raw; returns name -> path.

    OpenI publishes no checksums: the sha256 of each first complete download is recorded in
    out/raw/SHA256SUMS and checked on every later run. Both the download and the extraction
    go to temporary names first, so an interrupted run is redone rather than half used.
    """
    raw = out / "raw"
    got = {name: fetch(f"{base_url.rstrip('/')}/{name}", raw / name) for name in names}
    png = got.get("NLMCXR_png.tgz")
    if png is not None:
        got["NLMCXR_png"] = extract(png, raw / "NLMCXR_png")
    return got


def check_out_outside(out: Path, images: Path) -> None:
    """The original image folder is read-only to us: refuse an --out inside it."""
    out = out.resolve()
    if out == images or out.is_relative_to(images):
        raise ValueError(
            f"--out {out} is inside --images {images}; the builder never writes into the "
            "original image folder. Choose an --out outside it (e.g. data/iu_xray)."
        )


def link_images(out: Path, images: Path) -> Path:
    """out/images -> the user's image folder; nothing is ever written through this link."""
    link = out / "images"
    if link.is_symlink():
        if link.resolve() == images:
            return link
        link.unlink()  # a link of an earlier build to another folder; the folder is untouched
    elif link.exists():
        raise FileExistsError(
            f"{link} exists and is not a link to --images {images}; move it away or choose "
            "another --out."
        )
    os.symlink(images, link, target_is_directory=True)
    return link


def build(
    out: str | Path,
    reports_tgz: str | Path | None = None,
    images: str | Path | None = None,
    seed: int = 42,
    findings_only: bool = False,
    labels: bool = True,
    metadata_csv: str | Path | None = None,
) -> pd.DataFrame:
    """Write the reports table (and, with images, manifest.csv + meta); returns the table."""
    out = Path(out)
    if images is not None:
        images = Path(images).resolve()
        if not images.is_dir():
            raise FileNotFoundError(f"--images {images} is not a folder (expected NLMCXR_png)")
        check_out_outside(out, images)
    with build_lock(out):
        return _build(out, reports_tgz, images, seed, findings_only, labels, metadata_csv)


def _build(
    out: Path,
    reports_tgz: str | Path | None,
    images: Path | None,
    seed: int,
    findings_only: bool,
    labels: bool,
    metadata_csv: str | Path | None,
) -> pd.DataFrame:
    tgz = Path(reports_tgz) if reports_tgz else reports_path()
    df = parse_reports(tgz)
    df["split"] = seeded_split(df["id"].tolist(), seed)
    picked = [
        report_text(f, i, findings_only)
        for f, i in zip(df["findings"], df["impression"], strict=True)
    ]
    df["report"] = [p[0] for p in picked]
    df["report_source"] = [p[1] for p in picked]
    dropped: dict[str, int] = {}
    n_fallback = int((df["report_source"] == "impression").sum())
    empty = df["report"] == ""
    dropped["no findings" if findings_only else "no findings and no impression"] = int(empty.sum())
    df = df[~empty].reset_index(drop=True)
    if labels:
        df = attach_labels(df, ("findings", "impression"))

    df.to_csv(out / REPORTS_TABLE, index=False)
    options = {"findings_only": findings_only, "reports_tgz": str(tgz), "images": str(images or "")}
    print(
        f"IU X-Ray: {len(df)} reports ({n_fallback} use IMPRESSION as target) -> {out / REPORTS_TABLE}"
    )
    if images is None:
        return df

    index = {p.stem: p for p in images.rglob("*.png")}
    require_rows(len(index), f"--images {images}", "the folder holds no .png files; pass the "
                 "extracted NLMCXR_png folder (or use --download).")
    views = load_view_positions(metadata_csv)
    link_images(out, images)
    chosen, rules = [], []
    for ids in df["image_ids"]:
        available = [i for i in ids.split(";") if i in index]
        img, rule = choose_frontal(available, views)
        chosen.append(f"images/{index[img].relative_to(images).as_posix()}" if img else "")
        rules.append(rule)
    df["image_path"] = chosen
    df["view_rule"] = rules
    no_img = df["image_path"] == ""
    dropped["no frontal image found"] = int(no_img.sum())
    df = df[~no_img].reset_index(drop=True)
    require_rows(len(df), f"--images {images}", "none of its .png files is an image of these "
                 "reports (file names must be the OpenI image ids, e.g. CXR1_1_IM-0001-3001.png).")
    meta = {
        "builder": "data_prep.iu_xray",
        "seed": seed,
        "options": options,
        "counts": {
            "studies": len(df),
            "split": split_counts(df),
            "dropped": dropped,
            "target_from_impression": int((df["report_source"] == "impression").sum()),
            "view_rule": df["view_rule"].value_counts().to_dict(),
        },
        "labels": "rrglib.labeler on FINDINGS + IMPRESSION" if labels else "none",
    }
    path = write_manifest(df, out, meta)
    print(f"manifest: {len(df)} studies {split_counts(df)}; dropped {dropped} -> {path}")
    return df


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (manifest.csv, iu_reports.csv)")
    ap.add_argument("--reports-tgz", help="NLMCXR_reports.tgz (default: torchxrayvision's copy)")
    ap.add_argument(
        "--images", help="NLMCXR_png folder; without it only the reports table is built"
    )
    ap.add_argument("--download", action="store_true", help="fetch the official OpenI archives")
    ap.add_argument("--download-url", default=OPENI_BASE, help="base URL of the archives")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--findings-only", action="store_true", help="drop reports without FINDINGS")
    ap.add_argument("--no-labels", action="store_true", help="do not attach labeler labels")
    args = ap.parse_args(argv)
    out = Path(args.out)
    tgz, images = args.reports_tgz, args.images
    with one_line_errors("data_prep.iu_xray"):
        if args.download:
            with build_lock(out):
                got = download(out, args.download_url)
            tgz = tgz or got["NLMCXR_reports.tgz"]
            images = images or got.get("NLMCXR_png")
        build(
            out,
            tgz,
            images,
            seed=args.seed,
            findings_only=args.findings_only,
            labels=not args.no_labels,
        )


if __name__ == "__main__":
    main()
