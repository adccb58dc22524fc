"""Manifest validation, image loading and batching (rrglib.data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _toydata import make_toy_manifest
from PIL import Image

from data_prep.common import seeded_split, write_manifest
from rrglib.data import (
    ImageLoadError,
    ManifestError,
    ReportCollator,
    ReportDataset,
    load_image,
    load_manifest,
    read_image_array,
)
from rrglib.labels import CHEXPERT_OBSERVATIONS

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
REAL_CXR = Path(__file__).resolve().parent / "fixtures" / "real_cxr"  # see its README


def _gray(path: Path, size=(40, 30), value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full(size[::-1], value, dtype=np.uint8)
    arr[: size[1] // 2] = 30
    Image.fromarray(arr, mode="L").save(path)
    return path


def _manifest_df(n: int = 3) -> pd.DataFrame:
    rows = []
    for i in range(n):
        rows.append(
            {
                "id": f"s{i}",
                "split": ["train", "validate", "test"][i % 3],
                "image_path": f"images/s{i}.png",
                "findings": "The heart is enlarged.",
                "impression": "Cardiomegaly.",
                "report": "The heart is enlarged.",
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    df = _manifest_df(3)
    for p in df["image_path"]:
        _gray(tmp_path / p)
    df["Cardiomegaly"] = [1, 0, -1]
    df["Pleural Effusion"] = [np.nan, 1, np.nan]
    write_manifest(df, tmp_path, meta={"builder": "test", "seed": 0})
    return tmp_path


def _write_csv(tmp_path: Path, df: pd.DataFrame) -> Path:
    for p in df["image_path"]:
        if isinstance(p, str) and p and not p.startswith("/") and ".." not in p:
            _gray(tmp_path / p)
    path = tmp_path / "manifest.csv"
    df.to_csv(path, index=False)
    return path


# -- manifests ---------------------------------------------------------------------------


def test_roundtrip_and_meta(dataset_dir: Path) -> None:
    df = load_manifest(dataset_dir)
    assert list(df["id"]) == ["s0", "s1", "s2"]
    assert df["Cardiomegaly"].tolist() == [1.0, 0.0, -1.0]
    assert np.isnan(df["Pleural Effusion"].iloc[0])
    meta = json.loads((dataset_dir / "manifest.meta.json").read_text())
    assert meta["counts"]["studies"] == 3 and meta["counts"]["split"]["test"] == 1
    text = (dataset_dir / "manifest.csv").read_text()
    assert ",1,," in text or ",1," in text  # labels written as 1/0/-1/blank, not 1.0


def test_missing_file_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data_prep"):
        load_manifest(tmp_path / "nope.csv")


def test_missing_columns(tmp_path: Path) -> None:
    path = _write_csv(tmp_path, _manifest_df().drop(columns=["report", "impression"]))
    with pytest.raises(
        ManifestError, match=r"manifest.csv.*missing column\(s\) impression, report"
    ):
        load_manifest(path)


def test_duplicate_ids(tmp_path: Path) -> None:
    df = _manifest_df()
    df.loc[2, "id"] = "s0"
    with pytest.raises(ManifestError, match=r"duplicate id\(s\) s0"):
        load_manifest(_write_csv(tmp_path, df))


def test_ids_stay_strings(tmp_path: Path) -> None:
    df = _manifest_df()
    df["id"] = ["007", "1e5", "3"]
    out = load_manifest(_write_csv(tmp_path, df))
    assert list(out["id"]) == ["007", "1e5", "3"]


def test_unknown_split(tmp_path: Path) -> None:
    df = _manifest_df()
    df.loc[1, "split"] = "val"
    with pytest.raises(ManifestError, match=r"unknown split.*'val'.*s1.*validate"):
        load_manifest(_write_csv(tmp_path, df))


def test_missing_image(tmp_path: Path) -> None:
    path = _write_csv(tmp_path, _manifest_df())
    (tmp_path / "images" / "s1.png").unlink()
    with pytest.raises(ManifestError, match=r"do not exist.*s1 \(images/s1.png\)"):
        load_manifest(path)
    assert len(load_manifest(path, check_images=False)) == 3


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/passwd", "images/../../x.png"])
def test_image_escaping_root(tmp_path: Path, bad: str) -> None:
    root = tmp_path / "ds"
    df = _manifest_df()
    df.loc[0, "image_path"] = bad
    _gray(tmp_path / "outside.png")
    with pytest.raises(ManifestError, match=r"outside the dataset root.*s0"):
        load_manifest(_write_csv(root, df), check_images=False)


def test_extra_view_columns_are_carried_unread(tmp_path: Path) -> None:
    # one frontal view per study, as in the paper: a lateral column is data, not an input
    df = _manifest_df()
    df["image_path_lateral"] = ["", "images/s1.png", "images/missing.png"]
    out = load_manifest(_write_csv(tmp_path, df))
    assert out["image_path_lateral"].tolist() == ["", "images/s1.png", "images/missing.png"]


def test_empty_report(tmp_path: Path) -> None:
    df = _manifest_df()
    df.loc[2, "report"] = "  "
    with pytest.raises(ManifestError, match=r"empty target text.*s2"):
        load_manifest(_write_csv(tmp_path, df))


@pytest.mark.parametrize("value", ["2", "yes", "0.5"])
def test_bad_label_values(tmp_path: Path, value: str) -> None:
    df = _manifest_df()
    df["Edema"] = ["1", value, ""]
    with pytest.raises(ManifestError, match=r"'Edema'.*s1=.*positive 1"):
        load_manifest(_write_csv(tmp_path, df))


# -- images ------------------------------------------------------------------------------


def test_16bit_uses_real_range(tmp_path: Path) -> None:
    # 12-bit data stored in a 16-bit PNG: scaling by 65535 would make it nearly black.
    arr = np.zeros((20, 30), dtype=np.uint16)
    arr[:, 15:] = 4095
    arr[:, :5] = 1000
    path = tmp_path / "x16.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    out = read_image_array(path)
    assert out.shape == (20, 30) and out.min() == 0.0 and out.max() == 1.0
    t = load_image(path, 16, MEAN, STD)
    assert t.shape == (3, 16, 16) and t.dtype == torch.float32
    assert torch.equal(t[0], t[1]) and torch.equal(t[1], t[2])
    assert t.max().item() == pytest.approx(1.0) and t.min().item() == pytest.approx(-1.0)


def test_rgba_and_rgb(tmp_path: Path) -> None:
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 0  # fully transparent: alpha must not blank the image
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = read_image_array(tmp_path / "a.png")
    assert out.shape == (10, 10) and np.allclose(out, 200 / 255)
    rgb = np.zeros((10, 12, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    t = load_image(tmp_path / "c.jpg", 8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert t.shape == (3, 8, 8) and t[0].mean() > 0.9 and t[1].mean() < 0.1


def test_resize_shorter_side_and_center_crop(tmp_path: Path) -> None:
    arr = np.zeros((50, 100), dtype=np.uint8)
    arr[:, 25:75] = 255  # the central square is white; the sides are cropped away
    Image.fromarray(arr).save(tmp_path / "w.png")
    t = load_image(tmp_path / "w.png", 10, (0, 0, 0), (1, 1, 1))
    assert t.shape == (3, 10, 10) and t[..., 1:-1].min().item() > 0.95  # edges: antialias blur
    assert t.min().item() > 0.8


def test_corrupt_file_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ImageLoadError, match="broken.png"):
        load_image(bad, 8, MEAN, STD)


def test_dicom(tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / "x.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    arr = np.zeros((12, 12), dtype=np.uint16)
    arr[:, 6:] = 4000
    ds.Rows, ds.Columns = arr.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME1"  # bright = low attenuation: must invert
    ds.PixelData = arr.tobytes()
    ds.save_as(str(tmp_path / "x.dcm"), enforce_file_format=True)
    del pydicom
    out = read_image_array(tmp_path / "x.dcm")
    assert out[:, :6].min() == 1.0 and out[:, 6:].max() == 0.0


# -- dataset and collate -----------------------------------------------------------------


def test_dataset_and_collator(dataset_dir: Path) -> None:
    df = load_manifest(dataset_dir)
    ds = ReportDataset(df, None, 16, MEAN, STD)
    assert len(ds) == 3
    item = ds[2]
    assert item["id"] == "s2" and item["image"].shape == (3, 16, 16)
    lab = item["labels"]
    assert lab.shape == (14,) and lab[CHEXPERT_OBSERVATIONS.index("Cardiomegaly")] == -1
    assert torch.isnan(lab[CHEXPERT_OBSERVATIONS.index("Edema")])
    assert len(ReportDataset(dataset_dir / "manifest.csv", "train", 16, MEAN, STD)) == 1

    def tok(texts: list[str]) -> dict[str, torch.Tensor]:
        ids = torch.ones(len(texts), 5, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    batch = ReportCollator(tok)([ds[0], ds[1]])
    assert batch["images"].shape == (2, 3, 16, 16)
    assert batch["labels"].shape == (2, 14) and batch["labels"].dtype == torch.float32
    assert batch["ids"] == ["s0", "s1"] and len(batch["reports"]) == 2
    assert batch["report_input_ids"].shape == (2, 5) and "report_attention_mask" in batch


def test_real_nih_images_load(tmp_path: Path) -> None:
    import shutil

    files = sorted(REAL_CXR.glob("*.png"))
    assert len(files) == 2
    for f in files:
        shutil.copy(f, tmp_path / f.name)
    df = pd.DataFrame(
        {
            "id": [f.stem for f in files],
            "split": "test",
            "image_path": [f.name for f in files],
            "findings": "",
            "impression": "",
            "report": "unknown",
        }
    )
    write_manifest(df, tmp_path)
    ds = ReportDataset(load_manifest(tmp_path), "test", 224, MEAN, STD)
    for i in range(2):
        img = ds[i]["image"]
        assert img.shape == (3, 224, 224) and torch.isfinite(img).all()
        assert img.min() >= -1.0 and img.max() <= 1.0 and img.std() > 0.1


def test_seeded_split_proportions() -> None:
    keys = [str(i) for i in range(1000)]
    a, b = seeded_split(keys, 1), seeded_split(keys, 1)
    assert a == b and a != seeded_split(keys, 2)
    assert (a.count("train"), a.count("validate"), a.count("test")) == (700, 100, 200)


def test_dataset_for_builds_a_split_from_the_run_config(tmp_path: Path) -> None:
    from rrglib.config import RunConfig
    from rrglib.data import dataset_for
    from rrglib.encoder import build_encoder

    manifest = make_toy_manifest(tmp_path, n_train=6, n_val=2, n_test=3, size=32)
    cfg = RunConfig.from_yaml(CONFIGS / "smoke.yaml", [f"data.manifest={manifest}"])
    cfg.data.max_train_samples, cfg.data.max_eval_samples = 4, None
    train, test = dataset_for(cfg, "train"), dataset_for(cfg, "test")
    assert (len(train), len(test)) == (4, 3)
    assert len(dataset_for(cfg, "test", max_samples=2)) == 2
    enc = build_encoder(cfg.model.encoder)
    assert (train.mean, train.std) == (tuple(enc.mean), tuple(enc.std))
    size = cfg.model.encoder.image_size
    assert train[0]["image"].shape == (3, size, size)
    with pytest.raises(ValueError, match="max_samples"):
        dataset_for(cfg, "test", max_samples=0)
