"""MeSH agreement (hand-computed P/R/F1), the naive baseline, the one IU report parser,
normalise_with_map, and CheXbert's strict checkpoint loading."""

from __future__ import annotations

import io
import math
import random
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep.iu_reports import parse_report_xml, parse_reports, read_iu_xray_reports
from rrglib.labeler import normalise, normalise_with_map
from rrglib.labeler.__main__ import main as labeler_main
from rrglib.labeler.agreement import (
    agreement_table,
    format_agreement,
    mesh_observations,
    mesh_reference,
    naive_label_report,
)
from rrglib.labeler.chexbert import IGNORED_BERT_KEYS, load_strict
from rrglib.labels import CHEXPERT_OBSERVATIONS

NAN = math.nan


def test_mesh_mapping() -> None:
    assert mesh_observations("Cardiomegaly/mild") == {"Cardiomegaly"}
    assert mesh_observations("Cardiac Shadow/enlarged/moderate") == {"Cardiomegaly"}
    assert mesh_observations("Cardiac Shadow") == set()  # a normal heart shadow
    assert mesh_observations("Opacity/lung/base/left") == {"Lung Opacity"}
    assert mesh_observations("Opacity/ribs/left") == set()  # not in the lung
    assert mesh_observations("Nodule") == {"Lung Lesion"}
    assert mesh_observations("Nodule/lung/upper lobe") == {"Lung Lesion"}
    assert mesh_observations("Calcified Granuloma/lung/upper lobe/right") == set()
    assert mesh_observations("Hydropneumothorax/left") == {"Pneumothorax", "Pleural Effusion"}
    assert mesh_observations("Cicatrix/pleura/apex") == {"Pleural Other"}
    assert mesh_observations("Cicatrix/lung/apex") == {"Lung Opacity"}
    assert mesh_observations("Costophrenic Angle/left/blunted") == set()


def test_mesh_reference_no_finding() -> None:
    ref = mesh_reference([["normal"], ["Calcified Granuloma/lung"], ["Catheters, Indwelling"],
                          ["Cardiomegaly/mild", "Catheters, Indwelling"]])  # fmt: skip
    assert list(ref.columns) == list(CHEXPERT_OBSERVATIONS)
    assert ref["No Finding"].tolist() == [1, 1, 1, 0]  # devices alone leave No Finding
    assert ref["Support Devices"].tolist() == [0, 0, 1, 1]
    assert ref["Cardiomegaly"].tolist() == [0, 0, 0, 1]


def test_agreement_table_by_hand() -> None:
    # 5 reports. Cardiomegaly: reference 1,1,0,0,1; predicted 1,-1,1,NaN,0 -> positive
    # (1 or -1) 1,1,1,0,0: TP 2, FP 1, FN 1 -> P 2/3, R 2/3, F1 2/3.
    # Edema: reference 0,0,0,0,1; predicted 0,NaN,0,0,-1 -> TP 1: P 1, R 1, F1 1.
    # Atelectasis: reference 1 once, never predicted: P 0, R 0, F1 0.
    reference = pd.DataFrame(0.0, index=range(5), columns=list(CHEXPERT_OBSERVATIONS))
    predicted = pd.DataFrame(NAN, index=range(5), columns=list(CHEXPERT_OBSERVATIONS))
    reference["Cardiomegaly"] = [1, 1, 0, 0, 1]
    predicted["Cardiomegaly"] = [1, -1, 1, NAN, 0]
    reference["Edema"] = [0, 0, 0, 0, 1]
    predicted["Edema"] = [0, NAN, 0, 0, -1]
    reference["Atelectasis"] = [0, 1, 0, 0, 0]
    table = agreement_table(predicted, reference)
    row = table.loc["Cardiomegaly"]
    assert (row["support"], row["predicted"]) == (3, 3)
    assert row[["P", "R", "F1"]].tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3])
    assert table.loc["Edema", ["P", "R", "F1"]].tolist() == [1.0, 1.0, 1.0]
    assert table.loc["Atelectasis", ["P", "R", "F1"]].tolist() == [0.0, 0.0, 0.0]
    # macro over the 5: Atelectasis 0, Cardiomegaly 2/3, Consolidation 0, Edema 1, Effusion 0
    assert table.loc["macro-5", "F1"] == pytest.approx((2 / 3 + 1) / 5)
    # no observation has 20 positives here: the macro over them is empty (NaN)
    assert math.isnan(table.loc["macro-support>=20", "F1"])
    text = format_agreement({"a": table, "b": table})
    assert "a F1" in text and "b P" in text and "macro-5" in text


def test_naive_baseline() -> None:
    labels = naive_label_report("No effusion. Cardiomegaly. Possible pneumonia.")
    assert labels["Pleural Effusion"] == 0.0 and labels["Cardiomegaly"] == 1.0
    assert labels["Pneumonia"] == 1.0  # naive: no uncertainty
    assert math.isnan(labels["No Finding"])
    assert naive_label_report("Normal chest.")["No Finding"] == 1.0


XML = """<eCitation><uId id="CXR{n}"/><MedlineCitation><Article><Abstract>
<AbstractText Label="COMPARISON">None.</AbstractText>
<AbstractText Label="FINDINGS">{findings}</AbstractText>
<AbstractText Label="IMPRESSION">{impression}</AbstractText>
</Abstract></Article></MedlineCitation>
<MeSH><major>{mesh}</major><automatic>Lung</automatic></MeSH>
<parentImage id="CXR{n}_1_IM-0001-3001"/><parentImage id="CXR{n}_1_IM-0001-4001"/></eCitation>"""


def _archive(path: Path, cases: list[tuple[int, str, str, str]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for n, findings, impression, mesh in cases:
            data = XML.format(n=n, findings=findings, impression=impression, mesh=mesh).encode()
            info = tarfile.TarInfo(f"ecgen-radiology/{n}.xml")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_iu_reports_parser(tmp_path: Path) -> None:
    tgz = _archive(tmp_path / "r.tgz", [
        (10, "Heart is enlarged.", "Cardiomegaly.", "Cardiomegaly/mild"),
        (2, "", "No acute disease.", "normal"),
    ])  # fmt: skip
    df = parse_reports(tgz)
    assert df["id"].tolist() == ["CXR2", "CXR10"]  # sorted by number, not as text
    assert df.loc[1, "findings"] == "Heart is enlarged." and df.loc[1, "comparison"] == "None."
    assert df.loc[1, "image_ids"].split(";") == ["CXR10_1_IM-0001-3001", "CXR10_1_IM-0001-4001"]
    reports = read_iu_xray_reports(tgz)
    assert reports["report"].tolist() == ["No acute disease.", "Heart is enlarged. Cardiomegaly."]
    assert parse_report_xml(XML.format(n=1, findings=" a \n b ", impression="", mesh="x"))[
        "findings"
    ] == "a b"
    with pytest.raises(ValueError, match="no XML reports"):
        parse_reports(_archive(tmp_path / "empty.tgz", []))


def test_agreement_command_on_a_tiny_archive(tmp_path: Path, capsys) -> None:
    tgz = _archive(tmp_path / "r.tgz", [
        (1, "The heart is enlarged.", "Cardiomegaly.", "Cardiomegaly/mild"),
        (2, "Heart size is normal. No effusion.", "Normal chest.", "normal"),
        (3, "Small right pleural effusion.", "", "Pleural Effusion/right/small"),
    ])  # fmt: skip
    labeler_main(["agreement", "--reports", str(tgz)])
    out = capsys.readouterr().out
    assert "rule F1" in out and "naive F1" in out
    row = next(line for line in out.splitlines() if line.startswith("Cardiomegaly"))
    # support 1, rule predicts 1 (P 1, R 1, F1 1)
    assert row.split()[1:6] == ["1.000", "1.000", "1.000", "1.000", "1.000"]


@pytest.mark.parametrize("text", [
    "Heart XXXX-size is NORMAL.\n\nNo  effusion;\t2. ___ pneumothorax",
    "İstanbul xx-XX  - --", "", "X", "xxXX_XX __",
])  # fmt: skip
def test_normalise_with_map_is_normalise(text: str) -> None:
    norm, index = normalise_with_map(text)
    assert norm == normalise(text) and len(index) == len(norm)
    assert index == sorted(index)
    for c, i in zip(norm, index, strict=True):
        if c not in " x":  # letters other than the de-identification word come from the text
            assert text[i].lower() == c or text[i] == c


def test_normalise_with_map_random() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice("aB -\t\n.Xx_İ") for _ in range(rng.randint(0, 20)))
        norm, index = normalise_with_map(text)
        assert norm == normalise(text) and len(index) == len(norm)


def test_chexbert_strict_loading_names_the_file(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    heads = torch.nn.ModuleList(torch.nn.Linear(4, 2) for _ in range(2))
    good = {k: v.clone() for k, v in heads.state_dict().items()}
    path = tmp_path / "chexbert.pth"
    load_strict(heads, good, path, "linear_heads.", [])  # loads without a word
    missing = {k: v for k, v in good.items() if k != "1.bias"}
    with pytest.raises(ValueError, match=r"chexbert\.pth.*missing keys \['linear_heads\.1\.bias'\]"):
        load_strict(heads, missing, path, "linear_heads.", [])
    extra = {**good, "2.weight": torch.zeros(2, 4)}
    with pytest.raises(ValueError, match=r"unexpected keys \['linear_heads\.2\.weight'\]"):
        load_strict(heads, extra, path, "linear_heads.", [])
    with pytest.raises(ValueError, match=r"unexpected keys \['classifier\.w'\]"):
        load_strict(heads, good, path, "linear_heads.", ["classifier.w"])
    wrong = {**good, "0.weight": torch.zeros(3, 3)}
    with pytest.raises(ValueError, match="chexbert.pth"):
        load_strict(heads, wrong, path, "linear_heads.", [])
    assert "pooler.dense.weight" in IGNORED_BERT_KEYS


def test_chexbert_refuses_a_pickle_with_code(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from rrglib.labeler import ChexbertLabeler

    path = tmp_path / "chexbert.pth"
    torch.save({"model_state_dict": {"x": np.float64}}, path)  # a class, not a tensor
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nheart\n")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        ChexbertLabeler(path)
