"""Bad data inputs: each stops with one clear error naming the file or flag and the fix,
and leaves every file it did not create as it was."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _toydata import make_toy_manifest, toy_sources
from PIL import Image

from data_prep import demo, iu_xray, mimic_cxr
from data_prep.common import BuildLockedError, build_lock, extract, fetch
from rrglib.data import ManifestError, load_manifest

ROOT = Path(__file__).resolve().parents[1]


def _snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under folder (links not followed)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    """A valid 12-study dataset; tests break one thing in it."""
    return make_toy_manifest(tmp_path / "toy", n_train=6, n_val=2, n_test=4, size=32)


def _edit(manifest: Path, **changes: tuple[int, str, str]) -> None:
    """Set df.loc[row, column] = value for each (row, column, value) given."""
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    for row, col, value in changes.values():
        df.loc[row, col] = value
    df.to_csv(manifest, index=False)


# -- manifests ---------------------------------------------------------------------------


def test_empty_manifest_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    path.write_bytes(b"")
    with pytest.raises(ManifestError, match=r"manifest.csv: the file is empty.*rebuild"):
        load_manifest(path)
    assert path.read_bytes() == b""


def test_header_only_and_binary_manifests_are_named(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    path.write_text("id,split,image_path,findings,impression,report\n")
    with pytest.raises(ManifestError, match=r"manifest.csv: no studies"):
        load_manifest(path)
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ManifestError, match=r"manifest.csv: "):
        load_manifest(path)


@pytest.mark.parametrize("text", ["nan", "NaN", "None", "  ", "null"])
def test_placeholder_report_text_names_the_row(toy: Path, text: str) -> None:
    _edit(toy, a=(3, "report", text))
    before = toy.read_bytes()
    with pytest.raises(ManifestError, match=r"manifest.csv: empty target text.*case003.*fill"):
        load_manifest(toy)
    assert toy.read_bytes() == before


def test_image_in_two_splits_is_refused_unless_allowed(toy: Path) -> None:
    # case011 (test) points at case000's training image, spelt differently
    _edit(toy, a=(11, "image_path", "images/./case000.png"))
    with pytest.raises(ManifestError, match=r"share an image.*case000=train.*case011=test"
                       r".*allow_overlap=True"):
        load_manifest(toy)
    assert len(load_manifest(toy, allow_overlap=True)) == 12


def test_identical_reports_across_splits_are_counted_not_refused(toy: Path) -> None:
    # the toy reports repeat by design (4 sentences): every test report also occurs in train
    df = load_manifest(toy)
    assert df.attrs["test_reports_in_train"] == 4
    _edit(toy, a=(8, "report", "A report no training study has."))
    assert load_manifest(toy).attrs["test_reports_in_train"] == 3


@pytest.mark.parametrize(
    ("content", "why"),
    [(b"", "empty file"), (b"\x89PNG\r\n\x1a\n garbage", "not a readable image"),
     ("tiny", r"1x1 px, smaller than 16")],
)
def test_bad_image_fails_at_load_naming_the_file(toy: Path, content, why: str) -> None:
    bad = toy.parent / "images" / "case005.png"
    if content == "tiny":
        Image.new("L", (1, 1)).save(bad)
    else:
        bad.write_bytes(content)
    tic = time.perf_counter()
    with pytest.raises(ManifestError, match=rf"case005 \(.*case005.png: {why}.*re-extract"):
        load_manifest(toy)
    assert time.perf_counter() - tic < 5  # before any model is built, not one epoch in
    assert load_manifest(toy, check_images=False)["id"].tolist()[5] == "case005"


# -- builder command lines ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [("--n", "0", r">= 1, got 0"), ("--image-size", "0", r">= 16, got 0"),
     ("--positive-fraction", "1.5", r"within \[0, 1\], got 1.5"),
     ("--positive-fraction", "nan", r"within \[0, 1\]"), ("--workers", "-2", ">= 1"),
     ("--n", "many", "expected an integer")],
)
def test_demo_cli_numbers_are_checked(tmp_path: Path, capsys, flag: str, value: str,
                                      says: str) -> None:
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as exc:
        demo.main(["--out", str(out), flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err
    assert re.search(says, err), err
    assert not out.exists()


def test_demo_build_function_checks_numbers_too(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--n must be >= 1, got 0"):
        demo.build(tmp_path / "d", n=0, sources=toy_sources())
    with pytest.raises(ValueError, match=r"--image-size must be >= 16"):
        demo.build(tmp_path / "d", n=5, image_size=1, sources=toy_sources())
    assert not (tmp_path / "d").exists()


# -- SynthCXR never writes into a dataset it did not create ------------------------------


def test_demo_refuses_a_real_dataset_and_keeps_it(toy: Path) -> None:
    before = _snapshot(toy.parent)
    with pytest.raises(FileExistsError, match=rf"{toy.parent} is not empty and was not built "
                       r"by data_prep.demo.*manifest.csv.*empty or new --out"):
        demo.build(toy.parent, n=6, image_size=32, workers=1, sources=toy_sources())
    assert _snapshot(toy.parent) == before
    assert not (toy.parent / ".build.lock").exists()


def test_demo_never_writes_through_an_images_link(tmp_path: Path) -> None:
    originals = tmp_path / "NLMCXR_png"
    originals.mkdir()
    Image.new("L", (32, 32)).save(originals / "CXR1_IM-0001-1001.png")
    before = _snapshot(originals)
    out = tmp_path / "iu"
    out.mkdir()
    (out / "images").symlink_to(originals, target_is_directory=True)
    (out / demo.OWNER_MARKER).write_text("")  # even a folder that claims to be ours
    with pytest.raises(FileExistsError, match=r"images is a link.*never writes through"):
        demo.build(out, n=6, image_size=32, workers=1, sources=toy_sources())
    assert _snapshot(originals) == before


def test_demo_rebuilds_its_own_folder_and_records_the_seed(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    demo.build(out, n=6, seed=3, image_size=32, workers=1, sources=toy_sources())
    df = demo.build(out, n=8, seed=4, image_size=32, workers=1, sources=toy_sources())
    meta = json.loads((out / "manifest.meta.json").read_text())
    assert meta["seed"] == meta["options"]["seed"] == 4 and len(df) == 8
    assert (out / demo.OWNER_MARKER).is_file()


# -- one build per folder ----------------------------------------------------------------


def test_second_build_into_a_locked_folder_fails_at_once(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    with build_lock(out):
        tic = time.perf_counter()
        with pytest.raises(BuildLockedError, match=rf"{out} is being built by another process"):
            demo.build(out, n=6, image_size=32, workers=1, sources=toy_sources())
        assert time.perf_counter() - tic < 2
    assert len(demo.build(out, n=6, image_size=32, workers=1, sources=toy_sources())) == 6


def test_lock_of_a_killed_build_is_released(tmp_path: Path) -> None:
    out = tmp_path / "mimic"
    code = ("import sys, time; from data_prep.common import build_lock\n"
            f"with build_lock({str(out)!r}):\n    print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(BuildLockedError, match=rf"pid {proc.pid}"):
            with build_lock(out):
                pass
    finally:
        proc.kill()
        proc.wait()
    with build_lock(out):  # the kernel dropped the dead process's lock: nothing stale
        pass


# -- IU X-Ray: empty inputs, the user's image folder, downloads --------------------------


def _reports_tgz(path: Path) -> Path:
    xml = ('<eCitation><uId id="CXR1"/><AbstractText Label="FINDINGS">Normal heart.'
           '</AbstractText><parentImage id="CXR1_IM-0001-1001"/></eCitation>')
    return _tar(path, {"ecgen-radiology/1.xml": xml.encode()})


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_iu_empty_images_folder_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "NLMCXR_png"
    empty.mkdir()
    with pytest.raises(ValueError, match=rf"--images {empty}: 0 studies.*no .png files"):
        iu_xray.build(tmp_path / "out", _reports_tgz(tmp_path / "r.tgz"), empty, labels=False)
    assert not (tmp_path / "out" / "manifest.csv").exists()
    with pytest.raises(SystemExit, match=r"^data_prep.iu_xray: error: --images .*0 studies"):
        iu_xray.main(["--out", str(tmp_path / "out"), "--reports-tgz", str(tmp_path / "r.tgz"),
                      "--images", str(empty), "--no-labels"])
    other = tmp_path / "other"
    other.mkdir()
    Image.new("L", (32, 32)).save(other / "unrelated.png")
    with pytest.raises(ValueError, match=r"0 studies.*none of its .png files"):
        iu_xray.build(tmp_path / "out", tmp_path / "r.tgz", other, labels=False)


def test_iu_never_writes_into_the_image_folder(tmp_path: Path) -> None:
    images = tmp_path / "NLMCXR_png"
    images.mkdir()
    Image.new("L", (32, 32)).save(images / "CXR1_IM-0001-1001.png")
    before = _snapshot(images)
    with pytest.raises(ValueError, match=r"--out .* is inside --images.*outside it"):
        iu_xray.build(images / "out", _reports_tgz(tmp_path / "r.tgz"), images, labels=False)
    assert _snapshot(images) == before and not (images / "out").exists()
    out = tmp_path / "iu"
    out.mkdir()
    (out / "images").symlink_to(tmp_path, target_is_directory=True)  # an earlier build's link
    iu_xray.build(out, tmp_path / "r.tgz", images, labels=False)
    assert (out / "images").resolve() == images.resolve()
    assert load_manifest(out)["image_path"].tolist() == ["images/CXR1_IM-0001-1001.png"]
    assert _snapshot(images) == before


def test_download_is_verified_and_redone_when_interrupted(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = _tar(mirror / "a.tgz", {"x.png": b"1", "sub/y.png": b"2"})
    raw = tmp_path / "raw"
    (raw).mkdir()
    (raw / "a.tgz.part").write_bytes(b"half")  # an interrupted earlier download
    got = fetch(archive.as_uri(), raw / "a.tgz")
    assert got.read_bytes() == archive.read_bytes() and not (raw / "a.tgz.part").exists()
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert (raw / "SHA256SUMS").read_text() == f"{digest}  a.tgz\n"
    got.write_bytes(got.read_bytes()[:-5])  # truncated afterwards
    with pytest.raises(ValueError, match=r"a.tgz: sha256 .* differs.*delete the file"):
        fetch(archive.as_uri(), raw / "a.tgz")
    with pytest.raises(ValueError, match="published"):
        fetch(archive.as_uri(), raw / "b.tgz", sha256="0" * 64)
    assert not (raw / "b.tgz").exists() and not (raw / "b.tgz.part").exists()


def test_extraction_is_atomic_and_redone_when_interrupted(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tgz", {"x.png": b"1", "sub/y.png": b"2"})
    dest = tmp_path / "raw" / "A"
    partial = dest.with_name("A.partial")
    partial.mkdir(parents=True)
    (partial / "x.png").write_bytes(b"")  # what an interrupted extraction left
    assert extract(archive, dest) == dest and not partial.exists()
    assert (dest / "sub" / "y.png").read_bytes() == b"2" and (dest / "x.png").read_bytes() == b"1"
    assert extract(archive, dest) == dest  # complete: reused
    half = tmp_path / "raw" / "B"  # a folder left by a build that had no marker
    half.mkdir()
    with pytest.raises(FileExistsError, match=r"B exists but is not a complete extraction.*"
                       r"delete"):
        extract(archive, half)


# -- MIMIC-CXR: empty results ------------------------------------------------------------


def test_mimic_refuses_an_empty_manifest(tmp_path: Path) -> None:
    root = tmp_path / "mimic"
    root.mkdir()
    with gzip.open(root / mimic_cxr.SPLIT_CSV, "wt") as fh:
        fh.write("dicom_id,study_id,subject_id,split\nd1,50000001,10000001,train\n")
    with gzip.open(root / mimic_cxr.METADATA_CSV, "wt") as fh:
        fh.write("dicom_id,ViewPosition\nd1,PA\n")
    with pytest.raises(ValueError, match=r"0 studies.*report file missing.*--reports"):
        mimic_cxr.build(root, tmp_path / "out", check_images=False, labels="none")
    assert not (tmp_path / "out" / "manifest.csv").exists()
    with pytest.raises(SystemExit, match=r"^data_prep.mimic_cxr: error: .*0 studies"):
        mimic_cxr.main(["--root", str(root), "--out", str(tmp_path / "out"),
                        "--no-check-images", "--labels", "none"])


def test_real_radiograph_fixture_is_in_the_repository() -> None:
    files = sorted((ROOT / "tests" / "fixtures" / "real_cxr").glob("*.png"))
    assert len(files) == 2
    assert all(np.asarray(Image.open(f)).std() > 20 for f in files)
