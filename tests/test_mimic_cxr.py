"""MIMIC-CXR builder on a tiny tree with the real layout, file names, columns and report styles."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data_prep.mimic_cxr import build, extract_sections, main
from rrglib.data import load_manifest

# Reports written in the style of the real mimic-cxr-reports files (leading spaces, wrapped
# lines, "___" de-identification, a wet read above the final report, section variants).
REPORTS = {
    (10000032, 50414267): """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. The
 cardiomediastinal silhouette is normal.  Clips project over the left lung,
 potentially within the breast. The imaged upper abdomen is unremarkable.

 IMPRESSION:

 No acute cardiopulmonary process.
""",
    (10000032, 53189527): """ WET READ: ___ ___ ___ 4:43 PM
  Small right pleural effusion.  No pneumothorax.
 ______________________________________________________________________________
                                 FINAL REPORT
 EXAMINATION:  CHEST (PORTABLE AP)

 INDICATION:  ___ year old woman with cirrhosis  // ?effusion

 COMPARISON:  ___

 FINDINGS AND IMPRESSION:
 Compared to the prior study there is a small right pleural effusion with
 adjacent atelectasis.  Heart size is normal.
""",
    (10000764, 57375967): """                                 FINAL REPORT
 HISTORY:  Cough.

 IMPRESSION:  Moderate cardiomegaly.  Mild pulmonary edema.
""",
    (10000898, 50771383): """                                 FINAL REPORT
 PA AND LATERAL VIEWS OF THE CHEST:

 FINDINGS:  The lungs are clear.  The heart is normal in size.  A right
 internal jugular central venous catheter terminates in the mid SVC.
 IMPRESSION:  Right IJ line in standard position.
""",
    (10000935, 51178377): """  EXAMINATION:  Chest radiograph.

 FINDINGS:
 Lateral view only.  No large effusion.
""",
    (10000935, 55697293): """                                 FINAL REPORT
 FINDINGS:
 Left lower lobe consolidation.
""",
}
# study -> list of (dicom_id, ViewPosition, split, has_file)
IMAGES = {
    (10000032, 50414267): [
        ("02aa804e-bde0afdd-112c0b34-7bc16eac-f0c5da34", "PA", "train", True),
        ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "LATERAL", "train", True),
    ],
    (10000032, 53189527): [
        ("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "AP", "train", True),
        ("1d0bafd0-72c92e4c-addb1c57-40008638-b9ec8584", "PA", "train", True),
    ],
    (10000764, 57375967): [
        ("096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4", "AP", "validate", True)
    ],
    (10000898, 50771383): [("abea5eb9-b7c32823-3a14c5ca-77868030-69c83139", "PA", "test", True)],
    (10000935, 51178377): [("9b314ad7-fbcb0422-6db62dfc-732858d0-a5527d8b", "LL", "train", True)],
    (10000935, 55697293): [("e084de3b-be89b11e-20fe3f9f-9c8d8dfe-4cfd202c", "PA", "train", False)],
}


def _make_tree(root: Path, chexpert: bool) -> None:
    split_rows, meta_rows = [], []
    for (subject, study), images in IMAGES.items():
        p = f"p{subject}"
        study_dir = root / "files" / p[:3] / p / f"s{study}"
        study_dir.mkdir(parents=True, exist_ok=True)
        (root / "files" / p[:3] / p / f"s{study}.txt").write_text(REPORTS[(subject, study)])
        for dicom, view, split, has_file in images:
            if has_file:
                Image.fromarray(np.full((24, 20), 100, np.uint8)).save(study_dir / f"{dicom}.jpg")
            split_rows.append(
                {"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": split}
            )
            meta_rows.append(
                {
                    "dicom_id": dicom,
                    "subject_id": subject,
                    "study_id": study,
                    "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                    "ViewPosition": view,
                    "Rows": 24,
                    "Columns": 20,
                    "StudyDate": 21800506,
                    "StudyTime": 213014.531,
                    "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                    "ViewCodeSequence_CodeMeaning": "postero-anterior",
                    "PatientOrientationCodeSequence_CodeMeaning": "Erect",
                }
            )
    with gzip.open(root / "mimic-cxr-2.0.0-split.csv.gz", "wt") as fh:
        pd.DataFrame(split_rows).to_csv(fh, index=False)
    with gzip.open(root / "mimic-cxr-2.0.0-metadata.csv.gz", "wt") as fh:
        pd.DataFrame(meta_rows).to_csv(fh, index=False)
    if chexpert:
        cols = [
            "subject_id",
            "study_id",
            "Atelectasis",
            "Cardiomegaly",
            "Consolidation",
            "Edema",
            "Enlarged Cardiomediastinum",
            "Fracture",
            "Lung Lesion",
            "Lung Opacity",
            "No Finding",
            "Pleural Effusion",
            "Pleural Other",
            "Pneumonia",
            "Pneumothorax",
            "Support Devices",
        ]
        rows = [[s, st] + [None] * 14 for s, st in IMAGES]
        lab = pd.DataFrame(rows, columns=cols)
        lab.loc[lab["study_id"] == 53189527, ["Pleural Effusion", "Atelectasis"]] = [1.0, 1.0]
        lab.loc[lab["study_id"] == 50414267, ["No Finding", "Pneumothorax"]] = [1.0, 0.0]
        with gzip.open(root / "mimic-cxr-2.0.0-chexpert.csv.gz", "wt") as fh:
            lab.to_csv(fh, index=False)


def test_section_extraction_variants() -> None:
    f, i = extract_sections(REPORTS[(10000032, 50414267)])
    assert (
        f.startswith("There is no focal consolidation")
        and "nipple shadows. The cardiomediastinal" in f
    )
    assert i == "No acute cardiopulmonary process."
    f, i = extract_sections(REPORTS[(10000032, 53189527)])  # wet read dropped; combined section
    assert "Compared to the prior study" in f and f == i and "4:43" not in f
    f, i = extract_sections(REPORTS[(10000764, 57375967)])
    assert f == "" and i == "Moderate cardiomegaly. Mild pulmonary edema."
    f, i = extract_sections(REPORTS[(10000898, 50771383)])  # same-line header text
    assert (
        f.startswith("The lungs are clear.") and f.endswith("mid SVC.") and i.startswith("Right IJ")
    )
    f, _ = extract_sections(" INDICATION: ___M s/p fall\n FINDINGS: No ___ fracture.\n")
    assert f == "No ___ fracture."


@pytest.mark.parametrize("chexpert", [True, False])
def test_build_manifest(tmp_path: Path, chexpert: bool, capsys: pytest.CaptureFixture) -> None:
    root, out = tmp_path / "mimic-cxr-jpg", tmp_path / "out"
    _make_tree(root, chexpert)
    df = build(root, out)
    man = load_manifest(out)  # validated, images found through out/files
    assert list(man["id"]) == ["s50414267", "s53189527", "s50771383"]
    by = man.set_index("id")
    assert by.loc["s50414267", "image_path"].endswith(
        "02aa804e-bde0afdd-112c0b34-7bc16eac-f0c5da34.jpg"
    )
    assert by.loc["s53189527", "view"] == "PA"  # PA preferred over AP
    assert by.loc["s50771383", "split"] == "test"
    assert by.loc["s50414267", "image_path"].startswith("files/p10/p10000032/s50414267/")
    meta = json.loads((out / "manifest.meta.json").read_text())
    assert meta["counts"]["dropped"] == {
        "frontal image file missing": 1,
        "no FINDINGS section": 1,
        "no frontal (PA/AP) image": 1,
    }
    assert meta["counts"]["studies_in_split_csv"] == 6
    printed = capsys.readouterr().out
    assert "no FINDINGS section" in printed and "3 studies" in printed
    if chexpert:
        assert "chexpert" in meta["labels"]
        assert (
            by.loc["s53189527", "Pleural Effusion"] == 1.0
            and by.loc["s50414267", "Pneumothorax"] == 0.0
        )
    else:
        assert "labeler" in meta["labels"]
        assert by.loc["s53189527", "Pleural Effusion"] == 1.0
        assert by.loc["s50771383", "Support Devices"] == 1.0
    assert len(df) == 3


def test_cli_impression_target(tmp_path: Path) -> None:
    root, out = tmp_path / "r", tmp_path / "o"
    _make_tree(root, chexpert=False)
    main(["--root", str(root), "--out", str(out), "--target", "impression", "--labels", "none"])
    man = load_manifest(out)
    assert "s57375967" in set(man["id"]) and "s55697293" not in set(man["id"])
    assert "Cardiomegaly" not in man.columns


def test_missing_official_csv_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="split.csv.gz.*PhysioNet"):
        build(tmp_path, tmp_path / "o")
