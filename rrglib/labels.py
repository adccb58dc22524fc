"""The 14 CheXpert observations and the label convention, defined once.

Label values, as CheXpert writes them: 1 positive, 0 negative, -1 uncertain, NaN not mentioned.
The evaluation convention (that of the common CheXbert scorer): positive or uncertain = 1,
negative or not mentioned = 0. The "-u0" variant counts uncertain as 0.
"""

from __future__ import annotations

CHEXPERT_OBSERVATIONS: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)  # fmt: skip
# The 5-observation subset used by most report-generation papers.
CHEXPERT_5: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
# The 13 abnormal observations: the study's primary metric leaves out No Finding, which a
# constant normal report already gets right for every normal study.
ABNORMAL: tuple[str, ...] = tuple(o for o in CHEXPERT_OBSERVATIONS if o != "No Finding")

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0


def is_positive(values, uncertain_positive: bool = True):
    """Binary labels under the convention: 1 (and -1 when `uncertain_positive`) -> True.
    Works on numpy arrays and torch tensors alike (NaN, 0 -> False)."""
    pos = values == POSITIVE
    return pos | (values == UNCERTAIN) if uncertain_positive else pos
