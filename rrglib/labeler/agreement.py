"""Agreement of a labeler with IU X-Ray's MeSH major tags, and a naive regex baseline.

The NLM indexers tagged every IU X-Ray report with MeSH terms (``Opacity/lung/base/left``);
``phrases.MESH_RULES`` maps them to CheXpert observations (and says what is left unmapped, and
why). No Finding: no major tag maps to one of the 12 findings. A labeler's -1 counts as positive.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

from rrglib.labeler.phrases import MESH_RULES, NAIVE_KEYWORDS
from rrglib.labels import ABNORMAL, CHEXPERT_5, CHEXPERT_OBSERVATIONS, is_positive


def mesh_observations(tag: str) -> set[str]:
    """CheXpert observations of one MeSH tag ("Opacity/lung/base/left" -> {"Lung Opacity"})."""
    heading, *qualifiers = [p.strip() for p in tag.split("/")]
    found: set[str] = set()
    for needed, observations in MESH_RULES.get(heading, []):
        if not needed or any(q in qualifiers for q in needed) or ("" in needed and not qualifiers):
            found.update(observations)
    return found


def mesh_reference(tag_lists: Iterable[Iterable[str]]) -> pd.DataFrame:
    """Binary reference labels (1/0, CHEXPERT_OBSERVATIONS columns), one row per tag list."""
    findings = [o for o in ABNORMAL if o != "Support Devices"]
    rows = []
    for tags in tag_lists:
        observed = set().union(*(mesh_observations(t) for t in tags))
        rows.append({**{o: float(o in observed) for o in CHEXPERT_OBSERVATIONS},
                     "No Finding": float(not observed.intersection(findings))})
    return pd.DataFrame(rows, columns=list(CHEXPERT_OBSERVATIONS), dtype=float)


def agreement_table(predicted: pd.DataFrame, reference: pd.DataFrame,
                    uncertain_positive: bool = True) -> pd.DataFrame:
    """Per observation: support, predicted, P, R, F1 (uncertain positive unless
    ``uncertain_positive`` is False, the "-u0" view), then rows ``macro-5`` (CHEXPERT_5) and
    ``macro-support>=20``. P, R or F1 of an observation without positives on either side is 0."""
    rows = {}
    for obs in CHEXPERT_OBSERVATIONS:
        pred = is_positive(predicted[obs].to_numpy(dtype=float), uncertain_positive)
        ref = reference[obs].to_numpy(dtype=float) == 1.0
        tp = int((pred & ref).sum())
        p = tp / pred.sum() if pred.sum() else 0.0
        r = tp / ref.sum() if ref.sum() else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        rows[obs] = dict(support=int(ref.sum()), predicted=int(pred.sum()), P=p, R=r, F1=f1)
    table = pd.DataFrame.from_dict(rows, orient="index")
    frequent = table.index[table["support"] >= 20]
    for name, observations in (("macro-5", list(CHEXPERT_5)), ("macro-support>=20", frequent)):
        table.loc[name] = [np.nan, np.nan, *table.loc[observations, ["P", "R", "F1"]].mean()]
    return table


# A deliberately naive labeler: keywords, and "no" / "without" / "negative for" earlier in the
# same sentence negates. No uncertainty, no scopes, no normal qualifiers.
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
    return pd.DataFrame([naive_label_report(t) for t in texts], columns=list(CHEXPERT_OBSERVATIONS),
                        dtype=float)


def iu_agreement(labelers: dict[str, Callable[[list[str]], pd.DataFrame]], reports: pd.DataFrame,
                 uncertain_positive: bool = True) -> dict[str, pd.DataFrame]:
    """Agreement tables of each labeler (texts -> labels) on IU reports: columns ``report`` and
    ``mesh_major`` (``data_prep.iu_reports.read_iu_xray_reports``)."""
    reference = mesh_reference(t.split(";") for t in reports["mesh_major"])
    texts = reports["report"].tolist()
    return {name: agreement_table(label(texts).reset_index(drop=True), reference,
                                  uncertain_positive) for name, label in labelers.items()}


def format_agreement(tables: dict[str, pd.DataFrame]) -> str:
    """The tables side by side: support, and predicted / P / R / F1 of each labeler."""
    parts = [next(iter(tables.values()))[["support"]]]
    parts += [t[["predicted", "P", "R", "F1"]].add_prefix(f"{name} ") for name, t in tables.items()]
    return pd.concat(parts, axis=1).to_string(float_format=lambda x: f"{x:.3f}", na_rep="")
