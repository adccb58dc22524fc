"""IU X-Ray builder: XML parsing, frontal choice, split, PNG folder, --download via file://."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.iu_reports import parse_report_xml, parse_reports
from data_prep.iu_xray import build, choose_frontal, main
from rrglib.data import load_manifest

XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="CXR{n}"/>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
      <Article PubModel="Electronic">
         <Abstract>
            <AbstractText Label="COMPARISON">None.</AbstractText>
            <AbstractText Label="INDICATION">XXXX-year-old male, chest pain.</AbstractText>
            <AbstractText Label="FINDINGS">{findings}</AbstractText>
            <AbstractText Label="IMPRESSION">{impression}</AbstractText>
         </Abstract>
      </Article>
   </MedlineCitation>
   <MeSH>
      <major>{mesh}</major>
      <automatic>Lung</automatic>
   </MeSH>
   {images}
</eCitation>
"""
CASES = [
    (
        1,
        "The heart is enlarged. No pleural effusion or pneumothorax.",
        "Cardiomegaly.",
        "Cardiomegaly/mild",
        ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"],
    ),
    (
        2,
        "",
        "No acute cardiopulmonary abnormality.",
        "normal",
        ["CXR2_IM-0652-1001", "CXR2_IM-0652-2001"],
    ),
    (3, "", "", "normal", ["CXR3_IM-1384-1001"]),
    (10, "Lungs are clear. Normal heart size.", "Normal chest.", "normal", ["CXR10_IM-0002-1001"]),
]


def _xml(n: int, findings: str, impression: str, mesh: str, images: list[str]) -> str:
    imgs = "\n".join(f'<parentImage id="{i}"><figureId>F1</figureId></parentImage>' for i in images)
    return XML.format(n=n, findings=findings, impression=impression, mesh=mesh, images=imgs)


def _tgz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def reports_tgz(tmp_path: Path) -> Path:
    members = {f"ecgen-radiology/{c[0]}.xml": _xml(*c).encode() for c in CASES}
    return _tgz(tmp_path / "NLMCXR_reports.tgz", members)


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_parse_xml_keeps_sections_mesh_images() -> None:
    rec = parse_report_xml(_xml(*CASES[0]))
    assert rec["id"] == "CXR1" and rec["impression"] == "Cardiomegaly."
    assert rec["findings"].startswith("The heart is enlarged.")
    assert rec["mesh_major"] == "Cardiomegaly/mild" and rec["mesh_automatic"] == "Lung"
    assert rec["image_ids"] == "CXR1_1_IM-0001-3001;CXR1_1_IM-0001-4001"


def test_frontal_rule() -> None:
    views = {"a": "LL", "b": "PA", "c": "AP"}
    assert choose_frontal(["a", "c", "b"], views) == ("b", "metadata PA")
    assert choose_frontal(["a", "c"], views) == ("c", "metadata AP")
    assert choose_frontal(["a", "x", "y"], views) == ("x", "first listed")
    assert choose_frontal(["a"], views) == ("", "no frontal image")


def test_reports_only_table(tmp_path: Path, reports_tgz: Path) -> None:
    df = build(tmp_path / "out", reports_tgz)
    assert list(df["id"]) == ["CXR1", "CXR2", "CXR10"]  # numeric order; CXR3 has no text
    assert df.set_index("id").loc["CXR2", "report_source"] == "impression"
    assert df.set_index("id").loc["CXR1", "Cardiomegaly"] == 1.0
    assert (tmp_path / "out" / "iu_reports.csv").is_file()
    assert not (tmp_path / "out" / "manifest.csv").exists()
    only = build(tmp_path / "o2", reports_tgz, findings_only=True, labels=False)
    assert list(only["id"]) == ["CXR1", "CXR10"]


def test_manifest_with_png_folder(tmp_path: Path, reports_tgz: Path) -> None:
    png = tmp_path / "NLMCXR_png"
    png.mkdir()
    for name in ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001", "CXR2_IM-0652-1001"]:
        (png / f"{name}.png").write_bytes(_png_bytes())
    meta_csv = tmp_path / "meta.csv"
    meta_csv.write_text("imageid,View Position\nCXR1_1_IM-0001-3001,LL\nCXR1_1_IM-0001-4001,PA\n")
    build(tmp_path / "out", reports_tgz, png, seed=1, metadata_csv=meta_csv)
    man = load_manifest(tmp_path / "out")
    by = man.set_index("id")
    assert list(by.index) == ["CXR1", "CXR2"]
    assert by.loc["CXR1", "image_path"] == "images/CXR1_1_IM-0001-4001.png"
    assert (
        by.loc["CXR1", "view_rule"] == "metadata PA"
        and by.loc["CXR2", "view_rule"] == "first listed"
    )
    meta = json.loads((tmp_path / "out" / "manifest.meta.json").read_text())
    assert meta["counts"]["dropped"]["no frontal image found"] == 1 and meta["seed"] == 1


def test_split_is_seeded_7_1_2(tmp_path: Path) -> None:
    members = {
        f"ecgen-radiology/{n}.xml": _xml(n, "Normal heart size.", "", "normal", []).encode()
        for n in range(1, 101)
    }
    tgz = _tgz(tmp_path / "r.tgz", members)
    a = build(tmp_path / "a", tgz, seed=3, labels=False)
    b = build(tmp_path / "b", tgz, seed=3, labels=False)
    assert a["split"].tolist() == b["split"].tolist()
    assert a["split"].value_counts().to_dict() == {"train": 70, "test": 20, "validate": 10}


def test_download_from_file_url(tmp_path: Path, reports_tgz: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    reports_tgz.rename(mirror / "NLMCXR_reports.tgz")
    _tgz(
        mirror / "NLMCXR_png.tgz",
        {"CXR1_1_IM-0001-3001.png": _png_bytes(), "CXR2_IM-0652-1001.png": _png_bytes()},
    )
    out = tmp_path / "dl"
    main(["--out", str(out), "--download", "--download-url", mirror.as_uri(), "--no-labels"])
    assert (out / "raw" / "NLMCXR_png" / "CXR2_IM-0652-1001.png").is_file()
    man = load_manifest(out)
    assert set(man["id"]) == {"CXR1", "CXR2"}
    assert len(parse_reports(out / "raw" / "NLMCXR_reports.tgz")) == 4


def test_download_error_is_clear(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="iu_xray: error: could not download .*NLMCXR_png.tgz"):
        main(["--out", str(tmp_path), "--download", "--download-url", (tmp_path / "none").as_uri()])
