"""MIMIC-CXR (PhysioNet) -> manifest.

    python -m data_prep.mimic_cxr --root MIMIC_CXR_JPG_DIR --out data/mimic_cxr [--reports DIR]

Reads the official files as distributed: the MIMIC-CXR-JPG tree
`files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg`, `mimic-cxr-2.0.0-split.csv.gz`,
`mimic-cxr-2.0.0-metadata.csv.gz` (ViewPosition) and, if present,
`mimic-cxr-2.0.0-chexpert.csv.gz`; the free-text reports `files/pXX/pXXXXXXXX/sXXXXXXXX.txt`
(mimic-cxr-reports, under --reports or --root). One frontal image per study (PA, then AP;
ties by dicom_id), the official split, FINDINGS as the target (the paper's choice). Every
dropped study is counted by reason in the meta JSON and printed.
"""

from __future__ import annotations

import argparse
import os
import re
from collections import Counter
from pathlib import Path

import pandas as pd

from data_prep.common import (
    attach_labels,
    build_lock,
    one_line_errors,
    require_rows,
    split_counts,
    write_manifest,
)
from rrglib.data import REQUIRED_COLUMNS
from rrglib.labels import CHEXPERT_OBSERVATIONS

SPLIT_CSV = "mimic-cxr-2.0.0-split.csv.gz"
METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv.gz"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv.gz"
FRONTAL = ("PA", "AP")
TARGETS = ("findings", "impression", "findings+impression")

# A section header starts a line: capitals (with spaces, "/", "&", "-") then a colon.
_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z /&,()-]{1,60}?)[ \t]*:", re.MULTILINE)
_FINDINGS_KEYS = (
    "FINDINGS",
    "FINDING",
    "FINDINGS AND IMPRESSION",
    "FINDINGS/IMPRESSION",
    "IMPRESSION AND FINDINGS",
    "FINDINGS AND IMPRESSIONS",
)
_IMPRESSION_KEYS = (
    "IMPRESSION",
    "IMPRESSIONS",
    "CONCLUSION",
    "FINDINGS AND IMPRESSION",
    "FINDINGS/IMPRESSION",
    "IMPRESSION AND FINDINGS",
    "FINDINGS AND IMPRESSIONS",
)


def _clean(text: str) -> str:
    """Unwrap lines and collapse whitespace; '___' de-identification is kept as written."""
    text = re.sub(r"_{10,}", " ", text)  # the rule line under a wet read, not a redaction
    return re.sub(r"\s+", " ", text).strip()


def split_sections(report: str) -> dict[str, str]:
    """Report text -> {HEADER: text}; the wet read before FINAL REPORT is discarded."""
    final = re.search(r"^\s*FINAL REPORT\s*$", report, re.MULTILINE)
    if final:
        report = report[final.end() :]
    sections: dict[str, str] = {}
    matches = list(_HEADER.finditer(report))
    for k, m in enumerate(matches):
        end = matches[k + 1].start() if k + 1 < len(matches) else len(report)
        name = re.sub(r"\s+", " ", m.group(1)).strip()
        body = _clean(report[m.end() : end])
        if name in sections:  # a repeated header continues its section
            sections[name] = f"{sections[name]} {body}".strip()
        else:
            sections[name] = body
    sections.pop("WET READ", None)
    return sections


def extract_sections(report: str) -> tuple[str, str]:
    """(FINDINGS, IMPRESSION) of a MIMIC-CXR report; '' where the section is absent."""
    sections = split_sections(report)
    findings = next((sections[k] for k in _FINDINGS_KEYS if sections.get(k)), "")
    impression = next((sections[k] for k in _IMPRESSION_KEYS if sections.get(k)), "")
    return findings, impression


def study_dir(subject_id: int, study_id: int) -> str:
    """files/pXX/pXXXXXXXX/sXXXXXXXX, the layout of both MIMIC-CXR distributions."""
    p = f"p{subject_id}"
    return f"files/{p[:3]}/{p}/s{study_id}"


def choose_frontal(views: pd.DataFrame) -> str | None:
    """dicom_id of the frontal image of one study: PA before AP, ties by dicom_id."""
    for wanted in FRONTAL:
        hit = views[views["ViewPosition"] == wanted]
        if len(hit):
            return str(sorted(hit["dicom_id"])[0])
    return None


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {what} comes with MIMIC-CXR-JPG 2.0.0 from PhysioNet; "
            "pass its folder as --root."
        )
    return pd.read_csv(path, dtype={"dicom_id": str})


def build(
    root: str | Path,
    out: str | Path,
    reports: str | Path | None = None,
    target: str = "findings",
    check_images: bool = True,
    labels: str = "auto",
) -> pd.DataFrame:
    """Write manifest.csv + meta for MIMIC-CXR; returns the manifest table."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    root, out = Path(root).resolve(), Path(out)
    reports = Path(reports).resolve() if reports else root
    with build_lock(out):
        return _build(root, out, reports, target, check_images, labels)


def _build(
    root: Path, out: Path, reports: Path, target: str, check_images: bool, labels: str
) -> pd.DataFrame:
    split = _read_csv(root / SPLIT_CSV, "the official split")
    meta_df = _read_csv(root / METADATA_CSV, "the image metadata")
    images = split.merge(meta_df[["dicom_id", "ViewPosition"]], on="dicom_id", how="left")
    images["ViewPosition"] = images["ViewPosition"].fillna("").astype(str).str.upper().str.strip()

    dropped: Counter[str] = Counter()
    rows, views_used = [], Counter()
    for (subject, study), grp in images.groupby(["subject_id", "study_id"], sort=True):
        splits = set(grp["split"])
        if len(splits) != 1:
            dropped["images of one study in several splits"] += 1
            continue
        base = study_dir(int(subject), int(study))
        frontal = grp[grp["ViewPosition"].isin(FRONTAL)]
        if check_images:
            exists = pd.Series(
                [(root / base / f"{d}.jpg").is_file() for d in frontal["dicom_id"]],
                index=frontal.index,
                dtype=bool,
            )
            if len(frontal) and not exists.any():
                dropped["frontal image file missing"] += 1
                continue
            frontal = frontal.loc[exists]
        dicom = choose_frontal(frontal)
        if dicom is None:
            dropped["no frontal (PA/AP) image"] += 1
            continue
        report_path = reports / f"{base}.txt"
        if not report_path.is_file():
            dropped["report file missing"] += 1
            continue
        findings, impression = extract_sections(report_path.read_text(errors="replace"))
        text = {
            "findings": findings,
            "impression": impression,
            "findings+impression": " ".join(t for t in (findings, impression) if t),
        }[target]
        if not text:
            dropped[f"no {target.upper()} section"] += 1
            continue
        view = grp.loc[grp["dicom_id"] == dicom, "ViewPosition"].iloc[0]
        views_used[view] += 1
        rows.append(
            {
                "id": f"s{study}",
                "split": splits.pop(),
                "image_path": f"{base}/{dicom}.jpg",
                "findings": findings,
                "impression": impression,
                "report": text,
                "subject_id": int(subject),
                "study_id": int(study),
                "dicom_id": dicom,
                "view": view,
            }
        )
    df = pd.DataFrame(
        rows,
        columns=[*REQUIRED_COLUMNS, "subject_id", "study_id", "dicom_id", "view"],
    )
    require_rows(len(df), f"MIMIC-CXR under {root}", "studies dropped: "
                 f"{dict(sorted(dropped.items()))}; check --root (files/ and the csv.gz files) "
                 "and --reports (files/pXX/.../sXXX.txt).")

    label_source = "none"
    chexpert = root / CHEXPERT_CSV
    if labels in ("auto", "chexpert") and chexpert.is_file():
        lab = pd.read_csv(chexpert)
        df = df.merge(lab[["study_id", *CHEXPERT_OBSERVATIONS]], on="study_id", how="left")
        label_source = f"{CHEXPERT_CSV} (CheXpert labeler, from PhysioNet)"
    elif labels == "chexpert":
        raise FileNotFoundError(f"{chexpert} not found (needed by --labels chexpert)")
    elif labels in ("auto", "labeler") and len(df):
        df = attach_labels(df, ("findings", "impression"), overwrite=True)
        label_source = "rrglib.labeler on FINDINGS + IMPRESSION"

    out.mkdir(parents=True, exist_ok=True)
    link = out / "files"
    if link.is_symlink() and link.resolve() != (root / "files").resolve():
        link.unlink()  # an earlier build's link to another copy; the copy is untouched
    if (root / "files").is_dir() and not link.exists() and out.resolve() != root:
        os.symlink(root / "files", link, target_is_directory=True)
    meta = {
        "builder": "data_prep.mimic_cxr",
        "seed": None,
        "options": {
            "root": str(root),
            "reports": str(reports),
            "target": target,
            "check_images": check_images,
            "labels": labels,
        },
        "counts": {
            "studies": len(df),
            "split": split_counts(df) if len(df) else {},
            "studies_in_split_csv": int(images.groupby(["subject_id", "study_id"]).ngroups),
            "dropped": dict(sorted(dropped.items())),
            "view": dict(views_used),
        },
        "labels": label_source,
    }
    path = write_manifest(df, out, meta)
    print(f"MIMIC-CXR: {len(df)} studies {meta['counts']['split']} -> {path}")
    for reason, count in sorted(dropped.items()):
        print(f"  dropped {count:7d}  {reason}")
    return df


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, help="MIMIC-CXR-JPG folder (files/ and the csv.gz)")
    ap.add_argument("--out", required=True, help="output folder for manifest.csv")
    ap.add_argument("--reports", help="folder holding files/pXX/.../sXXX.txt (default: --root)")
    ap.add_argument("--target", choices=TARGETS, default="findings")
    ap.add_argument("--no-check-images", action="store_true", help="skip the image existence check")
    ap.add_argument(
        "--labels",
        choices=("auto", "chexpert", "labeler", "none"),
        default="auto",
        help="auto: the chexpert csv when present, else our labeler",
    )
    args = ap.parse_args(argv)
    with one_line_errors("data_prep.mimic_cxr"):
        build(args.root, args.out, args.reports, args.target, not args.no_check_images,
              args.labels)


if __name__ == "__main__":
    main()
