"""Agreement of a labeler with IU X-Ray's MeSH major tags, and a naive regex baseline.

The NLM indexers tagged every IU X-Ray report with MeSH terms (``Cardiomegaly/mild``,
``Opacity/lung/base/left``). ``MESH_RULES`` maps a tag to CheXpert observations; a report is
positive for an observation when one of its major tags maps to it. A labeler's 1 or -1 counts as
positive (the evaluation convention of ``rrglib.labels``).

Mapped (heading, and the qualifier the tag must carry, if any):
- Cardiomegaly; Cardiac Shadow/enlarged or /borderline -> Cardiomegaly (a borderline heart is
  uncertain cardiomegaly under CheXpert's rules, and uncertain counts as positive).
- Mediastinum/enlarged, /prominent or /widened -> Enlarged Cardiomediastinum.
- Opacity, Airspace Disease, Infiltrate, Density, Markings, Cicatrix (scar), Lung/interstitial
  with a ``lung`` (or retrocardiac) qualifier, Pulmonary Fibrosis, Lung Diseases, Interstitial
  -> Lung Opacity (CheXpert's Lung Opacity includes scarring, fibrosis and interstitial markings).
- Nodule, Mass with a ``lung`` qualifier (or none) -> Lung Lesion.
- Pulmonary Edema, Pulmonary Congestion, Heart Failure -> Edema (CheXpert's Edema mentions
  include congestion, vascular prominence and heart failure). Consolidation -> Consolidation.
  Pneumonia -> Pneumonia. Pulmonary Atelectasis, Volume Loss -> Atelectasis.
- Pneumothorax, Hydropneumothorax, Hemopneumothorax -> Pneumothorax.
- Pleural Effusion, Hydropneumothorax -> Pleural Effusion.
- Thickening or Cicatrix with a ``pleura`` qualifier -> Pleural Other. Fractures, Bone -> Fracture.
- Catheters, Indwelling; Implanted Medical Device; Medical Device; Tube, Inserted; Stents;
  Surgical Instruments (clips, sternotomy wires) -> Support Devices.
- No Finding: positive when no major tag maps to one of the 12 findings (Support Devices do not
  count), e.g. "normal", or only tags left unmapped below.

Left unmapped, and why:
- Calcified Granuloma, Granuloma, Granulomatous Disease, Calcinosis: healed old infection, not a
  CheXpert Lung Lesion or Pneumonia (CheXpert's lesion list has no granuloma).
- Emphysema, Pulmonary Disease, Chronic Obstructive; Lung/hyperdistention, /hypoinflation:
  lung volumes and COPD are no CheXpert observation.
- Costophrenic Angle/blunted: the IU radiologists often attribute blunting to scarring or
  pleural thickening ("chronic blunting ... without definite pleural effusion"), and tag an
  effusion they see as Pleural Effusion; CheXpert's effusion mentions are "effusion" and
  "pleural fluid" only.
- Pericardial Effusion: not pleural. Markings/bronchovascular: normal anatomy unless qualified.
- Bones and spine (Thoracic Vertebrae, Spine, Deformity, Scoliosis, Osteophyte ...), Aorta,
  Atherosclerosis, Hernia, Diaphragm, Foreign Bodies, Nipple Shadow, Lucency, Density outside the
  lung: outside CheXpert's 14 (Fracture aside).
- Technical Quality of Image Unsatisfactory, No Indexing: not findings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd

from rrglib.labels import ABNORMAL, CHEXPERT_5, CHEXPERT_OBSERVATIONS, is_positive

# heading -> (qualifiers of which the tag must hold one, or () for any; observations)
MESH_RULES: dict[str, list[tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "Cardiomegaly": [((), ("Cardiomegaly",))],
    "Cardiac Shadow": [(("enlarged", "borderline"), ("Cardiomegaly",))],
    "Mediastinum": [(("enlarged", "prominent", "widened"), ("Enlarged Cardiomediastinum",))],
    "Opacity": [(("lung", "retrocardiac"), ("Lung Opacity",))],
    "Airspace Disease": [((), ("Lung Opacity",))],
    "Infiltrate": [((), ("Lung Opacity",))],
    "Density": [(("lung", "retrocardiac"), ("Lung Opacity",))],
    "Markings": [(("lung",), ("Lung Opacity",))],
    "Cicatrix": [(("lung",), ("Lung Opacity",)), (("pleura",), ("Pleural Other",))],
    "Lung": [(("interstitial",), ("Lung Opacity",))],
    "Pulmonary Fibrosis": [((), ("Lung Opacity",))],
    "Lung Diseases, Interstitial": [((), ("Lung Opacity",))],
    "Nodule": [(("lung", ""), ("Lung Lesion",))],
    "Mass": [(("lung", ""), ("Lung Lesion",))],
    "Pulmonary Edema": [((), ("Edema",))],
    "Pulmonary Congestion": [((), ("Edema",))],
    "Heart Failure": [((), ("Edema",))],
    "Consolidation": [((), ("Consolidation",))],
    "Pneumonia": [((), ("Pneumonia",))],
    "Pulmonary Atelectasis": [((), ("Atelectasis",))],
    "Volume Loss": [((), ("Atelectasis",))],
    "Pneumothorax": [((), ("Pneumothorax",))],
    "Hydropneumothorax": [((), ("Pneumothorax", "Pleural Effusion"))],
    "Hemopneumothorax": [((), ("Pneumothorax",))],
    "Pleural Effusion": [((), ("Pleural Effusion",))],
    "Thickening": [(("pleura",), ("Pleural Other",))],
    "Fractures, Bone": [((), ("Fracture",))],
    "Catheters, Indwelling": [((), ("Support Devices",))],
    "Implanted Medical Device": [((), ("Support Devices",))],
    "Medical Device": [((), ("Support Devices",))],
    "Tube, Inserted": [((), ("Support Devices",))],
    "Stents": [((), ("Support Devices",))],
    "Surgical Instruments": [((), ("Support Devices",))],
}


def mesh_observations(tag: str) -> set[str]:
    """CheXpert observations of one MeSH tag ("Opacity/lung/base/left" -> {"Lung Opacity"}).

    A qualifier "" in a rule means "a tag with no qualifier at all"."""
    heading, *qualifiers = [p.strip() for p in tag.split("/")]
    found: set[str] = set()
    for needed, observations in MESH_RULES.get(heading, []):
        if not needed or any(q in qualifiers for q in needed) or ("" in needed and not qualifiers):
            found.update(observations)
    return found


def mesh_reference(tag_lists: Iterable[Iterable[str]], index: Any = None) -> pd.DataFrame:
    """Binary reference labels (1/0, CHEXPERT_OBSERVATIONS columns), one row per tag list."""
    findings = [o for o in ABNORMAL if o != "Support Devices"]
    rows = []
    for tags in tag_lists:
        observed = set().union(*(mesh_observations(t) for t in tags))
        row = {o: float(o in observed) for o in CHEXPERT_OBSERVATIONS}
        row["No Finding"] = float(not observed.intersection(findings))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(CHEXPERT_OBSERVATIONS), dtype=float)
    if index is not None:
        frame.index = pd.Index(index)
    return frame


def agreement_table(
    predicted: pd.DataFrame, reference: pd.DataFrame, uncertain_positive: bool = True
) -> pd.DataFrame:
    """Per observation: support, predicted, P, R, F1 (uncertain counts as positive unless
    ``uncertain_positive`` is False, the "-u0" view), then rows ``macro-5`` (CHEXPERT_5) and ``macro-support>=20`` (observations with >= 20
    reference positives). P, R or F1 of an observation without positives on either side is 0."""
    rows = {}
    for obs in CHEXPERT_OBSERVATIONS:
        pred = is_positive(predicted[obs].to_numpy(dtype=float), uncertain_positive)
        ref = reference[obs].to_numpy(dtype=float) == 1.0
        tp = int((pred & ref).sum())
        p = tp / pred.sum() if pred.sum() else 0.0
        r = tp / ref.sum() if ref.sum() else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        rows[obs] = {"support": int(ref.sum()), "predicted": int(pred.sum()), "P": p, "R": r, "F1": f1}
    table = pd.DataFrame.from_dict(rows, orient="index")
    frequent = table.index[table["support"] >= 20]
    for name, observations in (("macro-5", list(CHEXPERT_5)), ("macro-support>=20", frequent)):
        table.loc[name] = [np.nan, np.nan, *table.loc[observations, ["P", "R", "F1"]].mean()]
    return table


# ---------------------------------------------------------------------------------------------
# A deliberately naive labeler: keywords, and "no" / "without" / "negative for" earlier in the
# same sentence negates. No uncertainty, no scopes, no normal qualifiers.
# ---------------------------------------------------------------------------------------------
NAIVE_KEYWORDS: dict[str, str] = {
    "Enlarged Cardiomediastinum": r"widened mediastinum|mediastinal widening",
    "Cardiomegaly": r"cardiomegaly|enlarged heart|heart is enlarged|cardiac enlargement",
    "Lung Opacity": r"opacit\w*|infiltrat\w*|airspace disease|scar\w*|fibrosis",
    "Lung Lesion": r"nodules?|mass|masses|tumou?r|lesions?",
    "Edema": r"edema|congestion|chf",
    "Consolidation": r"consolidat\w*",
    "Pneumonia": r"pneumonia",
    "Atelectasis": r"atelecta\w*",
    "Pneumothorax": r"pneumothora\w*",
    "Pleural Effusion": r"effusions?",
    "Pleural Other": r"pleural thickening",
    "Fracture": r"fractur\w*",
    "Support Devices": r"pacemaker|catheter|tube|line|clips?|sternotomy|stent",
}
_NAIVE = {o: re.compile(rf"\b(?:{p})\b") for o, p in NAIVE_KEYWORDS.items()}
_NAIVE_NEG = re.compile(r"\b(?:no|without|negative for)\b")


def naive_label_report(text: str | None) -> dict[str, float]:
    """The naive baseline on one report: 1 / 0 / NaN per observation."""
    labels = dict.fromkeys(CHEXPERT_OBSERVATIONS, np.nan)
    for sentence in re.split(r"[.;\n]", (text or "").lower()):
        for obs, pattern in _NAIVE.items():
            for m in pattern.finditer(sentence):
                value = 0.0 if _NAIVE_NEG.search(sentence[: m.start()]) else 1.0
                labels[obs] = np.nanmax([labels[obs], value])
    if text and not any(labels[o] == 1.0 for o in ABNORMAL if o != "Support Devices"):
        labels["No Finding"] = 1.0
    return labels


def naive_label_reports(texts: Iterable[str | None]) -> pd.DataFrame:
    """The naive baseline on many reports (CHEXPERT_OBSERVATIONS columns)."""
    rows = [naive_label_report(t) for t in texts]
    return pd.DataFrame(rows, columns=list(CHEXPERT_OBSERVATIONS), dtype=float)


def iu_agreement(
    labelers: dict[str, Callable[[list[str]], pd.DataFrame]],
    reports: pd.DataFrame,
    uncertain_positive: bool = True,
) -> dict[str, pd.DataFrame]:
    """Agreement tables of each labeler (texts -> labels) on IU reports (``read_iu_xray_reports``
    columns ``report`` and ``mesh_major``)."""
    reference = mesh_reference(t.split(";") for t in reports["mesh_major"])
    texts = reports["report"].tolist()
    return {
        name: agreement_table(label(texts).reset_index(drop=True), reference, uncertain_positive)
        for name, label in labelers.items()
    }


def format_agreement(tables: dict[str, pd.DataFrame]) -> str:
    """The tables side by side: support, and predicted / P / R / F1 of each labeler."""
    first = next(iter(tables.values()))
    parts = [first[["support"]]]
    for name, table in tables.items():
        part = table[["predicted", "P", "R", "F1"]].copy()
        part.columns = [f"{name} {c}" for c in part.columns]
        parts.append(part)
    joined = pd.concat(parts, axis=1)
    return joined.to_string(float_format=lambda x: f"{x:.3f}", na_rep="")
