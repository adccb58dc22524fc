"""Labeler API, CheXbert wrapper errors and a sanity check on the IU X-Ray reports."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from data_prep.iu_reports import read_iu_xray_reports
from rrglib.labeler import (
    MENTIONS,
    get_labeler,
    label_frequency_table,
    label_report,
    label_reports,
)
from rrglib.labeler.agreement import agreement_table, mesh_reference, naive_label_reports
from rrglib.labels import CHEXPERT_OBSERVATIONS


def test_label_report_keys_in_order() -> None:
    labels = label_report("Cardiomegaly. No effusion.")
    assert list(labels) == list(CHEXPERT_OBSERVATIONS)
    assert labels["Cardiomegaly"] == 1.0 and labels["Pleural Effusion"] == 0.0
    assert math.isnan(labels["No Finding"])


@pytest.mark.parametrize("text", [None, "", " \n ", "XXXX XXXX.", "___", ". ; ."])
def test_no_report_is_all_nan(text: str | None) -> None:
    assert all(math.isnan(v) for v in label_report(text).values())


def test_label_reports_frame() -> None:
    frame = label_reports(
        ["No pneumothorax.", "Pacemaker. Possible pneumonia.", None], index=["a", "b", "c"]
    )
    assert list(frame.columns) == list(CHEXPERT_OBSERVATIONS)
    assert list(frame.index) == ["a", "b", "c"]
    assert frame.loc["a", "No Finding"] == 1.0 and frame.loc["a", "Pneumothorax"] == 0.0
    assert frame.loc["b", "Support Devices"] == 1.0 and frame.loc["b", "Pneumonia"] == -1.0
    assert frame.loc["c"].isna().all()
    assert set(np.unique(frame.to_numpy()[~np.isnan(frame.to_numpy())])) <= {-1.0, 0.0, 1.0}


def test_no_finding_ignores_support_devices_only() -> None:
    assert label_report("ET tube in place.")["No Finding"] == 1.0
    assert math.isnan(label_report("ET tube in place. Small effusion.")["No Finding"])
    assert math.isnan(label_report("Possible small effusion.")["No Finding"])


def test_phrase_lists_cover_every_finding() -> None:
    assert set(MENTIONS) == set(CHEXPERT_OBSERVATIONS) - {"No Finding"}


def test_get_labeler_rule_and_missing_checkpoint(tmp_path) -> None:
    for spec in (None, "rule"):
        frame = get_labeler(spec).label_reports(["Cardiomegaly."])
        assert frame.loc[0, "Cardiomegaly"] == 1.0
    missing = tmp_path / "chexbert.pth"
    with pytest.raises(FileNotFoundError, match="chexbert.pth"):
        get_labeler(str(missing))


@pytest.fixture(scope="module")
def iu_labels() -> pd.DataFrame:
    reports = read_iu_xray_reports()
    assert len(reports) == 3955
    return label_reports(reports["report"], index=reports["id"])


def test_iu_xray_label_frequencies(iu_labels: pd.DataFrame) -> None:
    table = label_frequency_table(iu_labels)
    positive = table["positive"] / len(iu_labels)
    # IU X-Ray is mostly normal outpatients: No Finding is by far the most common label
    assert positive.idxmax() == "No Finding"
    assert 0.5 < positive["No Finding"] < 0.8
    assert 0.04 < positive["Cardiomegaly"] < 0.2
    assert 0.1 < positive["Lung Opacity"] < 0.3
    assert 0.02 < positive["Pleural Effusion"] < 0.1
    assert positive["Pneumothorax"] < 0.02
    assert 0.03 < positive["Support Devices"] < 0.15
    # pertinent negatives are common in these reports
    assert table.loc["Pneumothorax", "negative"] > 0.5 * len(iu_labels)
    assert table.loc["Pleural Effusion", "negative"] > 0.5 * len(iu_labels)


# Speed (>= 500 reports/s on one core) is measured by benchmarks/bench_labeler.py, not here: a
# wall-clock threshold fails on a loaded CI machine without saying anything about the code.


def test_iu_mesh_agreement(iu_labels: pd.DataFrame) -> None:
    """The development reference: IU's MeSH major tags (see rrglib.labeler.agreement)."""
    reports = read_iu_xray_reports()
    reference = mesh_reference(t.split(";") for t in reports["mesh_major"])
    rule = agreement_table(iu_labels.reset_index(drop=True), reference)
    naive = agreement_table(naive_label_reports(reports["report"]), reference)
    assert rule.loc["macro-5", "F1"] >= 0.90  # 0.902 measured
    assert rule.loc["macro-5", "F1"] > naive.loc["macro-5", "F1"] + 0.05
    assert rule.loc["macro-support>=20", "F1"] > naive.loc["macro-support>=20", "F1"]
