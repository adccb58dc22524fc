"""SynthCXR: signs measured on the rendered image, grammar round trip, determinism."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep.common import seeded_split
from data_prep.demo import build, is_abnormal, sample_cases
from data_prep.synthcxr import Finding, Patient, draw_attributes, render, write_report
from rrglib.data import load_manifest
from rrglib.labeler import label_report
from rrglib.labels import CHEXPERT_OBSERVATIONS

S = 128
FINDINGS = [o for o in CHEXPERT_OBSERVATIONS if o != "No Finding"]


def _patient(seed: int = 3) -> Patient:
    return Patient.draw(np.random.default_rng(seed))


def _render(findings: list[Finding], seed: int = 3, size: int = S) -> np.ndarray:
    p = _patient(seed)
    p.rotation = 0.0  # measured rows/columns stay aligned with the anatomy
    return render(size, p, findings).astype(float)


def _bright_run(row: np.ndarray, centre: int, thresh: float) -> int:
    """Length of the run of pixels above thresh through `centre` (the heart's shadow)."""
    above = row > thresh
    lo = hi = centre
    while lo > 0 and above[lo - 1]:
        lo -= 1
    while hi < len(row) - 1 and above[hi + 1]:
        hi += 1
    return hi - lo + 1


def test_cardiomegaly_widens_heart() -> None:
    normal = _render([])
    big = _render([Finding("Cardiomegaly", 1.0, {"severity": "moderate"})])
    faint = _render([Finding("Cardiomegaly", -1.0, {"severity": "moderate"})])
    row = int(0.62 * S)  # through the heart, above the diaphragm
    lung_level = np.median(normal[int(0.4 * S), int(0.25 * S) : int(0.35 * S)])
    thresh = lung_level + 0.5 * (normal[row, S // 2] - lung_level)
    widths = [_bright_run(img[row], S // 2 + S // 20, thresh) for img in (normal, faint, big)]
    assert widths[0] < widths[1] < widths[2]
    assert widths[2] > 1.2 * widths[0]


@pytest.mark.parametrize("side", ["right", "left"])
def test_effusion_whitens_its_lung_base(side: str) -> None:
    normal = _render([])
    eff = _render([Finding("Pleural Effusion", 1.0, {"side": side, "severity": "moderate"})])
    # the patient's right is on the image's left
    rows = slice(int(0.6 * S), int(0.68 * S))
    right_cols, left_cols = slice(int(0.18 * S), int(0.3 * S)), slice(int(0.7 * S), int(0.82 * S))
    same, other = (right_cols, left_cols) if side == "right" else (left_cols, right_cols)
    assert eff[rows, same].mean() > normal[rows, same].mean() + 25
    assert abs(eff[rows, other].mean() - normal[rows, other].mean()) < 3
    # upper zone untouched by a moderate effusion
    top = slice(int(0.25 * S), int(0.35 * S))
    assert abs(eff[top, same].mean() - normal[top, same].mean()) < 3


def test_pneumothorax_darkens_its_apex() -> None:
    normal = _render([])
    ptx = _render([Finding("Pneumothorax", 1.0, {"side": "left", "severity": "large"})])
    apex = (slice(int(0.17 * S), int(0.27 * S)), slice(int(0.68 * S), int(0.8 * S)))
    mirror = (apex[0], slice(int(0.2 * S), int(0.32 * S)))
    assert ptx[apex].mean() < normal[apex].mean() - 5
    assert abs(ptx[mirror].mean() - normal[mirror].mean()) < 3


def test_every_sign_changes_the_image_and_uncertain_is_fainter() -> None:
    normal = _render([])
    rng = np.random.default_rng(0)
    for name in FINDINGS:
        attrs = draw_attributes(name, rng)
        pos = _render([Finding(name, 1.0, attrs)])
        unc = _render([Finding(name, -1.0, attrs)])
        d_pos, d_unc = np.abs(pos - normal).sum(), np.abs(unc - normal).sum()
        assert d_pos > 0.2 * S * S / 100, name  # a visible sign, not noise
        assert 0 < d_unc < d_pos, name


def test_renderer_deterministic_and_patients_vary() -> None:
    f = [Finding("Edema", 1.0, {"severity": "mild"})]
    a, b = _render(f, seed=5), _render(f, seed=5)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, _render(f, seed=6))
    img = render(96, _patient(1), [])
    assert img.dtype == np.uint8 and img.shape == (96, 96) and img.std() > 20


def _random_labels(rng: np.random.Generator) -> dict[str, float]:
    labels = {o: math.nan for o in CHEXPERT_OBSERVATIONS}
    for o in FINDINGS:
        if rng.random() < 0.3:
            labels[o] = float(rng.choice([1.0, 0.0, -1.0]))
    if not any(labels[o] in (1.0, -1.0) for o in FINDINGS if o != "Support Devices"):
        labels["No Finding"] = 1.0
    return labels


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return all(
        (math.isnan(a[o]) and math.isnan(b[o])) or a[o] == b[o] for o in CHEXPERT_OBSERVATIONS
    )


def test_grammar_round_trip_through_labeler() -> None:
    rng = np.random.default_rng(123)
    for case in range(600):
        labels = _random_labels(rng)
        findings = [
            Finding(o, v, draw_attributes(o, rng))
            for o, v in labels.items()
            if o in FINDINGS and v in (1.0, -1.0)
        ]
        negatives = [o for o in FINDINGS if labels[o] == 0.0]
        fnd, imp = write_report(findings, negatives, rng)
        for text in (fnd, f"{fnd} {imp}"):
            got = label_report(text)
            assert _same(got, labels), (case, text, {o: (labels[o], got[o]) for o in labels})


@pytest.fixture(scope="module")
def sources() -> pd.DataFrame:
    """A small stand-in for the IU reports: real-looking label vectors, 40 reports."""
    rng = np.random.default_rng(9)
    rows = []
    for i in range(40):
        labels = (
            _random_labels(rng)
            if i % 3
            else {
                **{o: math.nan for o in CHEXPERT_OBSERVATIONS},
                "No Finding": 1.0,
                "Pneumothorax": 0.0,
            }
        )
        rows.append(
            {
                "id": f"CXR{i + 1}",
                "findings": f"Findings {i}.",
                "impression": "Impression.",
                "report": f"Findings {i}.",
                **labels,
            }
        )
    return pd.DataFrame(rows)


def test_build_small_set_round_trips_and_is_deterministic(
    tmp_path: Path, sources: pd.DataFrame
) -> None:
    a = build(tmp_path / "a", n=24, seed=4, image_size=64, workers=1, sources=sources)
    b = build(tmp_path / "b", n=24, seed=4, image_size=64, workers=1, sources=sources)
    man = load_manifest(tmp_path / "a")
    assert len(man) == 24 and set(man["split"]) <= {"train", "validate", "test"}
    for _, row in man.iterrows():
        truth = {o: float(row[o]) for o in CHEXPERT_OBSERVATIONS}
        assert _same(label_report(row["report"]), truth), row["report"]
    assert a.drop(columns=[]).equals(b)

    def digest(d: Path) -> str:
        return hashlib.sha256(
            b"".join(p.read_bytes() for p in sorted((d / "images").glob("*.png")))
        ).hexdigest()

    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    meta = json.loads((tmp_path / "a" / "manifest.meta.json").read_text())
    assert meta["seed"] == 4 and meta["counts"]["studies"] == 24 and meta["contact_sheet"]
    assert (tmp_path / "a" / "contact_sheet.png").stat().st_size > 1000
    c = build(tmp_path / "c", n=24, seed=5, image_size=64, workers=1, sources=sources)
    assert not c["report"].equals(a["report"])


def test_iu_text_mode_and_options(tmp_path: Path, sources: pd.DataFrame) -> None:
    df = build(tmp_path / "iu", n=12, seed=1, image_size=48, workers=1, text="iu", sources=sources)
    by_id = sources.set_index("id")
    assert all(
        r == by_id.loc[s, "report"] for r, s in zip(df["report"], df["source_id"], strict=True)
    )
    df = build(
        tmp_path / "pf",
        n=30,
        seed=1,
        image_size=48,
        workers=1,
        positive_fraction=1.0,
        sources=sources,
    )
    assert is_abnormal(df).all()
    meta = json.loads((tmp_path / "pf" / "manifest.meta.json").read_text())
    assert meta["options"]["positive_fraction"] == 1.0


def test_sampling_keeps_sources_in_one_split_and_oversamples(sources: pd.DataFrame) -> None:
    splits = seeded_split(sources["id"].tolist(), 0)
    picks = sample_cases(sources, splits, 200, 0, oversample_rare=True)
    assert len(picks) == 200
    for row, split in picks:
        assert splits[row] == split
    counts = pd.Series([splits[r] for r, _ in picks]).value_counts()
    assert counts["train"] == 140 and counts["test"] == 40
    plain = sample_cases(sources, splits, 200, 0)
    rare = sources[FINDINGS].isin([1.0, -1.0]).sum().idxmin()
    has = set(np.flatnonzero(sources[rare].isin([1.0, -1.0])))

    def share(p: list[tuple[int, str]]) -> float:
        train = [r for r, s in p if s == "train"]
        return sum(r in has for r in train) / len(train)

    assert share(picks) >= share(plain)
