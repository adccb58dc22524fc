"""The IU X-Ray (OpenI) report archive ``NLMCXR_reports.tgz`` (shipped by torchxrayvision):
the one parser of its XML. Each report gives its id (``CXR1``), sections, the MeSH major and
automatic tags the NLM indexers wrote (``Opacity/lung/base/left``) and the ids of its images.
Callers compose the text they need: `data_prep.iu_xray` trains on findings (else impression), the
labeler reads findings + impression (`read_iu_xray_reports`). Multi-valued fields are ";"-joined
strings so the table stays flat.
"""

from __future__ import annotations

import importlib.util
import re
import tarfile
import xml.etree.ElementTree as ET
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

COLUMNS = ("id", "comparison", "indication", "findings", "impression", "mesh_major",
           "mesh_automatic", "image_ids")


def torchxrayvision_data(name: str) -> Path | None:
    """Path of a data file shipped inside the installed torchxrayvision package, or None."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    return path if path.is_file() else None


def reports_path() -> Path:
    """Path of ``NLMCXR_reports.tgz`` inside the installed torchxrayvision package."""
    path = torchxrayvision_data("NLMCXR_reports.tgz")
    if path is None:
        raise FileNotFoundError(
            "NLMCXR_reports.tgz not found: install torchxrayvision==1.5.7 (it ships the file; "
            "reinstall it if it is installed) or pass the archive's path.")
    return path


def _clean(text: str | None) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


def parse_report_xml(data: bytes | str) -> dict[str, Any]:
    """One OpenI XML report -> dict with the keys of ``COLUMNS``."""
    root = ET.fromstring(data)
    sections = {(e.get("Label") or "").upper(): _clean(e.text) for e in root.iter("AbstractText")}
    uid = root.find("uId")
    return {
        "id": uid.get("id", "") if uid is not None else "",
        "comparison": sections.get("COMPARISON", ""),
        "indication": sections.get("INDICATION", ""),
        "findings": sections.get("FINDINGS", ""),
        "impression": sections.get("IMPRESSION", ""),
        "mesh_major": ";".join(_clean(e.text) for e in root.iter("major")),
        "mesh_automatic": ";".join(_clean(e.text) for e in root.iter("automatic")),
        "image_ids": ";".join(e.get("id", "") for e in root.iter("parentImage")),
    }


def parse_reports(tgz: str | Path) -> pd.DataFrame:
    """All reports of an archive, one row each (columns ``COLUMNS``), sorted by IU number."""
    with tarfile.open(tgz, "r:*") as tar:
        rows = [parse_report_xml(tar.extractfile(m).read()) for m in tar
                if m.isfile() and m.name.endswith(".xml")]
    if not rows:
        raise ValueError(f"{tgz}: no XML reports inside; is this NLMCXR_reports.tgz?")
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    number = df["id"].str.extract(r"(\d+)", expand=False).fillna(-1).astype(int)
    return df.iloc[number.argsort(kind="stable")].reset_index(drop=True)


_cached = lru_cache(maxsize=2)(parse_reports)


def read_reports(path: str | Path | None = None) -> pd.DataFrame:
    """The parsed archive (default: torchxrayvision's copy); parsed once per path, then copied."""
    return _cached(str(path or reports_path())).copy()


def read_iu_xray_reports(path: str | Path | None = None) -> pd.DataFrame:
    """`read_reports` plus ``report``: findings + impression, the text the labeler reads."""
    df = read_reports(path)
    df["report"] = [" ".join(s for s in pair if s)
                    for pair in zip(df["findings"], df["impression"], strict=True)]
    return df
