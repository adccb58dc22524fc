"""Rule-based CheXpert-style labeler: report text -> 14 observations (1 / 0 / -1 / NaN).

Values follow CheXpert: 1.0 positive, 0.0 negative, -1.0 uncertain, NaN not mentioned.

How a report is read:
1. Normalise: lower case, de-identification tokens ("XXXX", "___") become the neutral word
   "xxxx", hyphens become spaces, whitespace is collapsed.
2. Split into sentences (".", ";", "!", new lines, numbered-list markers; not decimals, not
   "vs.").
3. Fixed assertions are matched first (``NORMAL_PHRASES``, ``UNCERTAIN_PHRASES``): an anatomical
   anchor with a qualifier, e.g. "heart size is normal" -> Cardiomegaly 0, "heart size is upper
   limits of normal" -> Cardiomegaly -1. Their spans are masked so the findings step ignores them.
4. Finding mentions (``MENTIONS``) are matched; mentions inside an ``UNMENTIONS`` phrase
   ("pericardial effusion") are dropped, and so is a mention lying strictly inside a longer mention
   of another observation ("scarring" inside "pleural scarring").
5. Each mention takes the nearest negation / uncertainty trigger in its scope (NegEx style):
   pre-triggers ("no", "cannot exclude") reach forward to the end of the sentence or a terminator
   ("but", "however", ...); post-triggers ("has resolved", "cannot be excluded") reach back over at
   most ``POST_SCOPE_WORDS`` words. Pre-negation uncertainty ("cannot exclude", "not ruled out") is
   matched before plain negation so that its "not" never negates. Pseudo-triggers ("no change",
   "not resolved") are masked and do nothing. A negation word inside a mention span ("heart is not
   enlarged") negates it. With no trigger the mention is positive.
6. Aggregate per observation over the report: positive beats uncertain beats negative.
7. No Finding = 1 when no observation other than Support Devices is positive or uncertain,
   otherwise NaN (CheXpert never writes 0 or -1 for No Finding).

Empty reports: a text that is None, empty, or holds nothing but de-identification tokens and
punctuation is "no report", and every observation, No Finding included, is NaN. We chose this so
that an empty generation is not rewarded as a normal study. Any other text, even one without a
single mention ("No acute cardiopulmonary process."), gets No Finding = 1.

The phrase lists below are regular-expression fragments written as readable phrases (one space
between words; they are matched against normalised text). The SynthCXR report grammar writes its
sentences so that this labeler reads its labels back exactly; change both together.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import math
import re
import tarfile
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rrglib.labels import CHEXPERT_OBSERVATIONS

POS, NEG, UNC = 1.0, 0.0, -1.0
NAN = float("nan")

# ---------------------------------------------------------------------------------------------
# Anchors and qualifiers: attributes that are neither normal nor abnormal until qualified.
# ---------------------------------------------------------------------------------------------
HEART = (
    r"(?:heart size|heart|cardiac silhouette|cardiac size|cardiac shadow|cardiac contours?"
    r"|heart shadow|size of the heart|cardiac and mediastinal (?:contours?|silhouettes?))"
)
MEDIASTINUM = (
    r"(?:cardiomediastinal (?:silhouettes?|contours?|structures|size|shadow)"
    r"|(?:heart and )?mediastinal (?:contours?|silhouettes?|structures|width)"
    r"|mediastinum|superior mediastinum|mediastinal and hilar contours)"
)
VASCULATURE = (
    r"(?:pulmonary vascularity|pulmonary vasculature|vascularity|vasculature|pulmonary vessels)"
)
COSTOPHRENIC = r"(?:costophrenic angles?|costophrenic sulci|costophrenic recesses)"
PLEURAL_SPACES = r"(?:pleural spaces?)"

_NORMAL_Q = (
    r"(?:(?<!limits of )(?<!limit of )(?<!top )(?<!high )(?<!not )normal(?: in size| size)?"
    r"|within normal limits|unremarkable|not enlarged|wnl)"
)
_BORDERLINE_Q = (
    r"(?:borderline(?: enlarged| in size)?|(?:at )?(?:the )?upper limits? of normal|top normal"
    r"|high normal|mildly prominent|prominent)"
)
_ENLARGED_Q = r"(?:enlarged|enlargement|increased in size|large|widened|widening)"
_CLEAR_Q = r"(?:clear|sharp|preserved|normal|free)"

# A short stretch of words between an anchor and its qualifier. It may not cross a qualifier of
# another kind or a clause terminator, so "heart is enlarged and lungs are normal" stays apart.
_GAP_STOP = (
    r"(?:but|however|although|though|whereas|while|enlarg\w*|normal|unremarkable|borderline"
    r"|prominent|widen\w*|large|upper|top|lungs?)\b"
)
GAP = rf"(?:,?\s(?!{_GAP_STOP})[\w']+){{0,5}}?,?\s"
SHORT_GAP = r"(?:\s[\w']+){0,2}?\s"


def _anchored(anchor: str, qualifier: str) -> list[str]:
    """Both word orders: "<anchor> ... <qualifier>" and "<qualifier> <anchor>"."""
    return [rf"{anchor}{GAP}{qualifier}", rf"{qualifier}{SHORT_GAP}{anchor}"]


# ---------------------------------------------------------------------------------------------
# Finding mentions: a match asserts the observation unless a trigger says otherwise.
# ---------------------------------------------------------------------------------------------
MENTIONS: dict[str, list[str]] = {
    "Enlarged Cardiomediastinum": [
        r"enlarged cardiomediastinum",
        r"widened mediastinum",
        r"mediastinal (?:widening|enlargement)",
        r"enlarged mediastin\w*(?: silhouettes?| contours?)?",
        r"cardiomediastinal enlargement",
        *_anchored(MEDIASTINUM, _ENLARGED_Q),
    ],
    "Cardiomegaly": [
        r"cardiomegaly",
        r"cardiac enlargement",
        r"enlarged heart",
        r"enlargement of the (?:heart|cardiac silhouette)",
        r"enlarged cardiac (?:silhouette|shadow|contours?|size)",
        *_anchored(HEART, _ENLARGED_Q),
    ],
    "Lung Opacity": [
        r"opacit(?:y|ies)",
        r"opacification",
        r"opacified",
        r"infiltrates?",
        r"infiltration",
        r"air ?space (?:disease|opacit(?:y|ies))",
        r"haziness",
        r"hazy",
        r"ground glass",
        r"reticular (?:opacit(?:y|ies)|markings?|pattern)",
        r"reticulonodular",
        r"interstitial (?:markings?|opacit(?:y|ies)|prominence|disease|pattern|thickening)",
        r"increased (?:lung )?markings",
        r"scarring",
        r"scar",
        r"fibrosis",
        r"fibrotic changes?",
        r"peribronchial (?:cuffing|thickening)",
    ],
    "Lung Lesion": [
        r"nodules?",
        r"nodular (?:opacit(?:y|ies)|densit(?:y|ies))",
        r"masse?s?",
        r"lesions?",
        r"neoplasm",
        r"tumou?r",
        r"carcinoma",
        r"malignancy",
        r"metastas[ie]s",
        r"cavitary lesion",
    ],
    "Edema": [
        r"edema",
        r"oedema",
        r"(?:pulmonary )?vascular (?:congestion|engorgement)",
        r"pulmonary congestion",
        r"congestive heart failure",
        r"chf",
        r"fluid overload",
        r"kerley b lines",
        r"cephalization",
        r"(?:increased|prominent|engorged) (?:pulmonary )?(?:vascularity|vasculature|vascular markings)",
    ],
    "Consolidation": [
        r"consolidations?",
        r"consolidative",
        r"consolidated",
    ],
    "Pneumonia": [
        r"pneumonias?",
        r"bronchopneumonia",
        r"pneumonitis",
        r"infections?",
        r"infectious (?:process|infiltrates?)",
    ],
    "Atelectasis": [
        r"atelectas[ie]s",
        r"atelectatic",
        r"volume loss",
        r"(?:lobar |lobe |lung |segmental )?collapse",
        r"collapsed lung",
        r"plate like",
        r"platelike",
    ],
    "Pneumothorax": [
        r"pneumothora(?:x|ces)",
        r"hydropneumothorax",
    ],
    "Pleural Effusion": [
        r"(?:pleural )?effusions?",
        r"pleural fluid",
        r"hydrothorax",
        r"hydropneumothorax",
        r"blunting of the (?:\w+ )?costophrenic (?:angles?|sulci|sulcus)",
        r"costophrenic (?:angle |sulcus )?blunting",
        r"blunted (?:\w+ )?costophrenic (?:angles?|sulci|sulcus)",
        r"(?:\w+ )?costophrenic (?:angles?|sulci|sulcus) (?:is |are )?blunted",
    ],
    "Pleural Other": [
        r"pleural (?:thickening|plaques?|calcifications?|scarring|fibrosis)",
        r"pleural parenchymal (?:scarring|thickening|opacit(?:y|ies))",
        r"pleuroparenchymal (?:scarring|thickening|opacit(?:y|ies))",
        r"thickened pleura",
        r"fibrothorax",
        r"apical (?:pleural )?capp?(?:ing)?",
    ],
    "Fracture": [
        r"fractures?",
        r"fractured",
        r"broken ribs?",
    ],
    "Support Devices": [
        r"pacemakers?",
        r"pacer",
        r"(?:cardiac )?defibrillator",
        r"aicd",
        r"icd",
        r"endotracheal tubes?",
        r"et tube",
        r"ett",
        r"tracheostomy(?: tube)?",
        r"(?:nasogastric|orogastric|feeding|enteric|gastric|chest|dobhoff) tubes?",
        r"(?:ng|og) tube",
        r"dobhoff",
        r"(?:central venous|central|venous|jugular|subclavian|picc) (?:line|catheter)s?",
        r"picc",
        r"port a cath",
        r"(?:chest wall |subcutaneous |power )?port",
        r"swan ganz(?: catheter)?",
        r"catheters?",
        r"(?:sternotomy|sternal|surgical) (?:wires?|sutures)",
        r"median sternotomy",
        r"sternotomy",
        r"(?:surgical|vascular) clips",
        r"(?:orthopedic |spinal |fixation )?hardware",
        r"stents?",
        r"(?:prosthetic|mechanical) (?:valve|heart valve)",
        r"valve replacement",
        r"pacing (?:leads?|wires?)",
        r"(?:pacemaker |pacer |icd )?leads?",
        r"drains?",
        r"ivc filter",
        r"lines and tubes",
        r"tubes and lines",
        r"support devices?",
    ],
}

# Phrases that contain a mention but are not that observation.
UNMENTIONS: dict[str, list[str]] = {
    "Pleural Effusion": [r"(?:pericardial|joint|knee|shoulder) effusions?"],
    "Edema": [r"(?:soft tissue|subcutaneous|extremity) edema"],
    "Lung Lesion": [
        r"mass effect",
        r"(?:soft tissue|breast|chest wall|mediastinal|hilar|neck|thyroid) (?:mass|masses|lesion|lesions)",
        r"(?:bone|bony|osseous|lytic|sclerotic|blastic|skin) (?:lesions?|mass)",
    ],
    "Lung Opacity": [r"(?:breast|soft tissue|nipple) (?:opacit(?:y|ies)|shadows?)"],
    "Atelectasis": [r"(?:vertebral|vertebral body|compression) collapse"],
    "Fracture": [r"(?:healed )?fracture fixation"],
    "Support Devices": [
        r"(?:pleural|fissure|skin|mach|septal|kerley b) lines?",
        r"leads? to",
        r"leading",
        r"airport",
        r"report",
        r"support",  # "to support" without "devices" is a verb
    ],
    "Pneumonia": [r"(?:urinary tract|skin|soft tissue) infections?"],
}

# Fixed negative assertions: phrase -> observations it makes 0.
NORMAL_PHRASES: list[tuple[str, tuple[str, ...]]] = [
    *[(p, ("Cardiomegaly",)) for p in _anchored(HEART, _NORMAL_Q)],
    *[
        (p, ("Enlarged Cardiomediastinum", "Cardiomegaly"))
        for p in _anchored(MEDIASTINUM, _NORMAL_Q)
    ],
    *[(p, ("Edema",)) for p in _anchored(VASCULATURE, _NORMAL_Q)],
    (rf"{COSTOPHRENIC}{GAP}{_CLEAR_Q}", ("Pleural Effusion",)),
    (rf"(?:sharp|clear|normal|preserved) {COSTOPHRENIC}", ("Pleural Effusion",)),
    (rf"{PLEURAL_SPACES}{GAP}(?:clear|normal|unremarkable)", ("Pleural Effusion", "Pneumothorax")),
    (rf"(?:clear|normal) {PLEURAL_SPACES}", ("Pleural Effusion", "Pneumothorax")),
]

# Fixed uncertain assertions: phrase -> observations it makes -1.
UNCERTAIN_PHRASES: list[tuple[str, tuple[str, ...]]] = [
    *[(p, ("Cardiomegaly",)) for p in _anchored(HEART, _BORDERLINE_Q)],
    *[(p, ("Enlarged Cardiomediastinum",)) for p in _anchored(MEDIASTINUM, _BORDERLINE_Q)],
]

# ---------------------------------------------------------------------------------------------
# Triggers. Each entry: (kind, direction, phrases). Matched in this order; each match is masked
# before the next group is searched, so "cannot be excluded" is never read as "not".
# kind: "neg" | "unc" | "pseudo" | "term";  direction: "pre" | "post" | "both".
# ---------------------------------------------------------------------------------------------
TRIGGERS: list[tuple[str, str, list[str]]] = [
    # "no findings to suggest pneumonia" negates; without this "suggest" would make it uncertain.
    (
        "neg",
        "pre",
        [
            r"(?:no|without|nothing)(?: [\w']+){0,4}? (?:to suggest|suggest(?:ive|ing) of|suspicious for"
            r"|concerning for|worrisome for|to indicate|diagnostic of|typical of|compatible with"
            r"|consistent with)",
        ],
    ),
    # pre-negation uncertainty: looks like negation, means "maybe"
    (
        "unc",
        "post",
        [
            r"(?:cannot|can not|could not|may not|can't) be (?:entirely |completely |fully )?(?:excluded|ruled out|excluded radiographically)",
            r"(?:is |are |was |were )?not (?:entirely |completely |totally )?(?:excluded|ruled out)",
        ],
    ),
    (
        "unc",
        "pre",
        [
            r"(?:cannot|can not|could not|can't|difficult to|unable to) (?:entirely |completely |fully )?(?:exclude|rule out|be excluded)",
            r"not (?:entirely |completely )?(?:excluded|ruled out)",
            r"rule out",
            r"r/o",
        ],
    ),
    (
        "pseudo",
        "pre",
        [
            r"no (?:significant |substantial |appreciable |interval |radiographic )?(?:change|increase|decrease|progression|worsening)",
            r"not (?:significantly )?(?:changed|increased|decreased)",
            r"(?:has |have )?not (?:yet |completely |entirely |fully )?(?:resolved|cleared)",
            r"without (?:significant |interval )?change",
            r"not only",
            r"no longer (?:compress\w*)",
            r"gram negative",
        ],
    ),
    (
        "neg",
        "post",
        [
            r"(?:is |are |was |were |has been |have been )?(?:not|no longer) (?:\w+ )?(?:seen|identified|visualized|visualised|demonstrated|present|evident|appreciated|detected|noted|apparent|observed|visible)",
            r"(?:has |have |had )?disappeared",
            r"(?:has |have |had )?been removed",
            r"(?:is |are |was |were )(?:now )?(?:absent|gone|removed)",
            r"(?:is |are )?unlikely",
            r"(?:is |are )?ruled out",
            r"(?:is |are )?excluded",
        ],
    ),
    ("neg", "both", [r"(?:has |have |had )?(?:resolved|cleared)"]),
    (
        "neg",
        "pre",
        [
            r"no (?:evidence|signs?|findings?|radiographic evidence) of",
            r"negative for",
            r"free of",
            r"clear of",
            r"absence of",
            r"resolution of",
            r"(?:interval )?removal of",
            r"no longer",
            r"without",
            r"no",
            r"not",
            r"nothing",
            r"neither",
            r"nor",
            r"never",
            r"absent",
            r"removed",
            r"rather than",
            r"instead of",
        ],
    ),
    ("unc", "both", [r"versus", r"vs", r"or less likely", r"and/or"]),
    (
        "unc",
        "post",
        [
            r"(?:is|are|was|were|remains?) (?:possible|suspected|questioned|questionable|a possibility|a consideration|considered)",
            r"\?",
        ],
    ),
    (
        "unc",
        "pre",
        [
            r"(?:may|might|could|can) (?:be|represent|reflect|indicate|relate to|be due to|be related to|suggest|include)",
            r"(?:may|might|could)",
            r"possible",
            r"possibly",
            r"probable",
            r"probably",
            r"presumed",
            r"presumably",
            r"likely",
            r"questionable",
            r"question of",
            r"suspicious for",
            r"suspicion (?:of|for)",
            r"suspected",
            r"suspect",
            r"concern(?:ing)? for",
            r"worrisome for",
            r"suggest(?:s|ed|ing|ive of)?",
            r"borderline",
            r"equivocal",
            r"indeterminate",
            r"differential (?:diagnosis )?(?:includes?|considerations? include)",
            r"consider(?:ed)?",
            r"cannot be excluded",
            r"either",
            r"versus",
        ],
    ),
    (
        "term",
        "both",
        [
            r"but",
            r"however",
            r"although",
            r"though",
            r"whereas",
            r"while",
            r"yet",
            r"except(?: for)?",
            r"with the exception of",
            r"aside from",
            r"apart from",
            r"other than",
            r"which",
            r"there (?:is|are|has been|have been)",
            r"(?:is|are) (?:seen|noted|present|again noted|again seen)",
        ],
    ),
]

POST_SCOPE_WORDS = 8  # how far back a post-trigger reaches ("effusion on the right has resolved")

_DEID = re.compile(r"\b[xX]{2,}\b|_{2,}")
# public: rrglib.analysis locates findings inside sentences with the same rules
SENTENCE_BOUNDARY = re.compile(r"(?<!\bvs)(?<!\d)\.(?!\d)|[;!\n]|\s\d+\.\s|\s\d+\)\s")
_WORD = re.compile(r"[a-z0-9]")


def _compile(phrases: Iterable[str]) -> re.Pattern[str]:
    # Longest alternatives first so that "no evidence of" wins over "no".
    ordered = sorted(phrases, key=len, reverse=True)
    words = [p for p in ordered if p != r"\?"]
    pattern = r"(?<![\w/])(?:" + "|".join(words) + r")(?![\w/])"
    if len(words) < len(ordered):  # a question mark needs no word boundary: "pneumonia?"
        pattern += r"|\?"
    return re.compile(pattern)


# compiled per observation: what mentions it, and look-alikes that do not ("heart size" is not cardiomegaly)
MENTION_PATTERNS = {obs: _compile(ps) for obs, ps in MENTIONS.items()}
UNMENTION_PATTERNS = {obs: _compile(ps) for obs, ps in UNMENTIONS.items()}


# Fixed phrases are costly to scan (an anchor, a gap, a qualifier); each group is only tried when
# the report holds one of its anchor's stems. Keyed by the group's first observation.
_FIXED_GUARDS = {
    "Cardiomegaly": ("heart", "cardi"),
    "Enlarged Cardiomediastinum": ("mediastin",),
    "Edema": ("vascul", "vessel"),
    "Pleural Effusion": ("costophrenic", "pleural space"),
}


def _grouped(
    phrases: list[tuple[str, tuple[str, ...]]],
) -> list[tuple[re.Pattern[str], tuple[str, ...], tuple[str, ...]]]:
    groups: dict[tuple[str, ...], list[str]] = {}
    for phrase, observations in phrases:
        groups.setdefault(observations, []).append(phrase)
    return [(_compile(ps), obs, _FIXED_GUARDS[obs[0]]) for obs, ps in groups.items()]


_NORMAL_RE = _grouped(NORMAL_PHRASES)
_UNCERTAIN_RE = _grouped(UNCERTAIN_PHRASES)
_TRIGGER_RE = [(kind, direction, _compile(ps)) for kind, direction, ps in TRIGGERS]


def normalise(text: str | None) -> str:
    """Lower-case, neutralise de-identification tokens and hyphens, collapse whitespace."""
    if not text:
        return ""
    text = _DEID.sub(" xxxx ", str(text)).lower()
    text = text.replace("-", " ")
    return re.sub(r"[ \t\r\f\v]+", " ", text)


def split_sentences(text: str) -> list[str]:
    """Split normalised text into sentences, each padded with one space at both ends."""
    return [f" {s.strip()} " for s in SENTENCE_BOUNDARY.split(text) if s.strip()]


def _mask(text: str, spans: Iterable[tuple[int, int]]) -> str:
    chars = list(text)
    for a, b in spans:
        chars[a:b] = " " * (b - a)
    return "".join(chars)


def _triggers(sentence: str) -> list[tuple[int, int, str, str]]:
    """All triggers in a sentence as (start, end, kind, direction), each span found once."""
    found: list[tuple[int, int, str, str]] = []
    work = sentence
    for kind, direction, pattern in _TRIGGER_RE:
        spans = [(m.start(), m.end()) for m in pattern.finditer(work)]
        found.extend((a, b, kind, direction) for a, b in spans)
        if spans:
            work = _mask(work, spans)
    found.sort()
    return found


def _status(
    start: int, end: int, triggers: list[tuple[int, int, str, str]], sentence: str
) -> float:
    """Value of one mention from the nearest trigger whose scope covers it (pre wins ties)."""
    pre: tuple[int, str] | None = None  # (distance in characters, kind)
    post: tuple[int, str] | None = None
    for a, b, kind, direction in triggers:
        if (a >= start and b <= end) or (a <= start and end <= b):
            if kind == "neg":  # "heart is not enlarged", "no opacity to suggest": overlapping
                return NEG
        elif b <= start:
            if kind == "term":
                pre = None  # a terminator closes the scope of every earlier pre-trigger
            elif direction in ("pre", "both"):
                pre = (start - b, kind)  # triggers are sorted, so the last one is the nearest
        elif a >= end:
            if kind == "term" or len(sentence[end:a].split()) > POST_SCOPE_WORDS:
                break
            if direction in ("post", "both"):
                post = (a - end, kind)
                break
    if pre is not None and (post is None or pre[0] <= post[0]):
        chosen = pre[1]
    elif post is not None:
        chosen = post[1]
    else:
        return POS
    return {"neg": NEG, "unc": UNC}.get(chosen, POS)  # a pseudo-trigger leaves it positive


def _combine(old: float, new: float) -> float:
    """Positive beats uncertain beats negative beats not mentioned."""
    if math.isnan(old):
        return new
    rank = {POS: 3, UNC: 2, NEG: 1}
    return new if rank[new] > rank[old] else old


def _label_text(text: str, labels: dict[str, float]) -> None:
    """Label normalised text in place. Patterns run once over the whole report (sentences
    joined by "|", which no pattern crosses); triggers are searched per sentence, and only in
    sentences that hold a mention."""
    sentences = split_sentences(text)
    joined = "|".join(sentences)
    fixed: list[tuple[int, int]] = []
    for pattern_list, value in ((_UNCERTAIN_RE, UNC), (_NORMAL_RE, NEG)):
        for pattern, observations, guards in pattern_list:
            if not any(g in joined for g in guards):
                continue
            for m in pattern.finditer(joined):
                fixed.append((m.start(), m.end()))
                for obs in observations:
                    labels[obs] = _combine(labels[obs], value)
    masked = _mask(joined, fixed) if fixed else joined

    mentions: list[tuple[int, int, str]] = []
    for obs, pattern in MENTION_PATTERNS.items():
        spans = [(m.start(), m.end()) for m in pattern.finditer(masked)]
        if not spans:
            continue
        if obs in UNMENTION_PATTERNS:
            bad = [(m.start(), m.end()) for m in UNMENTION_PATTERNS[obs].finditer(masked)]
            spans = [s for s in spans if not any(a <= s[0] and s[1] <= b for a, b in bad)]
        mentions.extend((a, b, obs) for a, b in spans)
    if not mentions:
        return
    # drop a mention strictly inside a longer mention of another observation
    mentions = [
        (a, b, o)
        for a, b, o in mentions
        if not any(
            o2 != o and a2 <= a and b <= b2 and (b2 - a2) > (b - a) for a2, b2, o2 in mentions
        )
    ]
    starts = list(itertools.accumulate((len(s) + 1 for s in sentences), initial=0))
    by_sentence: dict[int, list[tuple[int, int, str]]] = {}
    for a, b, obs in mentions:
        by_sentence.setdefault(bisect.bisect_right(starts, a) - 1, []).append((a, b, obs))
    for i, items in by_sentence.items():
        sentence, offset = sentences[i], starts[i]
        triggers = _triggers(sentence)
        for a, b, obs in items:
            value = _status(a - offset, b - offset, triggers, sentence)
            labels[obs] = _combine(labels[obs], value)


def label_report(text: str | None) -> dict[str, float]:
    """Label one report: {observation: 1.0 | 0.0 | -1.0 | NaN} in CHEXPERT_OBSERVATIONS order."""
    labels = {obs: NAN for obs in CHEXPERT_OBSERVATIONS}
    norm = normalise(text)
    if not _WORD.search(norm.replace("xxxx", "")):
        return labels  # no report: everything NaN, No Finding included
    _label_text(norm, labels)
    if not any(labels[o] in (POS, UNC) for o in _FINDINGS):
        labels["No Finding"] = POS
    return labels


_FINDINGS = tuple(o for o in CHEXPERT_OBSERVATIONS if o not in ("No Finding", "Support Devices"))


def label_reports(texts: Iterable[str | None], index: Any = None) -> pd.DataFrame:
    """Label many reports: DataFrame with columns CHEXPERT_OBSERVATIONS, values 1/0/-1/NaN."""
    rows = [label_report(t) for t in texts]
    frame = pd.DataFrame(rows, columns=list(CHEXPERT_OBSERVATIONS), dtype=float)
    if index is not None:
        frame.index = pd.Index(index)
    return frame


class RuleLabeler:
    """The rule-based labeler behind a small object interface shared with CheXbert."""

    tag = "RB"  # metric names: F1-RB-14-micro ...

    def label_reports(self, texts: Iterable[str | None], index: Any = None) -> pd.DataFrame:
        return label_reports(texts, index=index)


class ChexbertLabeler:
    """CheXbert (Smit et al. 2020) from a local checkpoint: bert-base-uncased + 14 linear heads.

    ``path`` is the public ``chexbert.pth`` (a dict with ``model_state_dict``; keys may carry the
    DataParallel ``module.`` prefix). The bert-base-uncased vocabulary must be local too: a
    ``vocab.txt`` or a ``bert-base-uncased`` folder beside the checkpoint, or the Hugging Face
    cache. Heads 0-12 predict blank/positive/negative/uncertain for the 13 findings in CheXbert's
    order; head 13 predicts blank/positive for No Finding.
    """

    tag = "CXB"
    CONDITIONS = (
        "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
        "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
        "Pleural Other", "Fracture", "Support Devices", "No Finding",
    )  # fmt: skip
    CLASS_VALUES = (NAN, POS, NEG, UNC)

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 16):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"CheXbert checkpoint {self.path} does not exist. Download chexbert.pth from the "
                "CheXbert authors (stanfordmlgroup/CheXbert README) and pass its path, or use the "
                "rule-based labeler (spec=None or 'rule')."
            )
        import torch
        from transformers import BertConfig, BertModel, BertTokenizerFast

        self.torch, self.device, self.batch_size = torch, device, batch_size
        self.tokenizer = self._tokenizer(BertTokenizerFast)
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        state = state.get("model_state_dict", state)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        self.bert = BertModel(BertConfig(), add_pooling_layer=False)  # defaults = bert-base
        self.bert.load_state_dict(
            {k.removeprefix("bert."): v for k, v in state.items() if k.startswith("bert.")},
            strict=False,
        )
        self.heads = torch.nn.ModuleList(
            torch.nn.Linear(768, 4 if i < 13 else 2) for i in range(14)
        )
        self.heads.load_state_dict(
            {
                k.removeprefix("linear_heads."): v
                for k, v in state.items()
                if k.startswith("linear_heads.")
            }
        )
        self.bert.to(device).eval()
        self.heads.to(device).eval()

    def _tokenizer(self, cls: Any) -> Any:
        for candidate in (self.path.parent / "bert-base-uncased", self.path.parent):
            if (candidate / "vocab.txt").is_file():
                return cls.from_pretrained(str(candidate))
        try:
            return cls.from_pretrained("bert-base-uncased", local_files_only=True)
        except OSError as err:
            raise FileNotFoundError(
                f"no bert-base-uncased vocabulary beside {self.path} (expected vocab.txt or a "
                "bert-base-uncased/ folder there) nor in the Hugging Face cache"
            ) from err

    def label_reports(self, texts: Iterable[str | None], index: Any = None) -> pd.DataFrame:
        texts = [normalise(t) or "" for t in texts]
        out = np.full((len(texts), 14), NAN)
        with self.torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[i : i + self.batch_size], padding=True, truncation=True,
                    max_length=512, return_tensors="pt",
                ).to(self.device)  # fmt: skip
                cls = self.bert(**batch).last_hidden_state[:, 0]
                for j, head in enumerate(self.heads):
                    pred = head(cls).argmax(-1).cpu().numpy()
                    out[i : i + len(pred), j] = [self.CLASS_VALUES[p] for p in pred]
        frame = pd.DataFrame(out, columns=list(self.CONDITIONS))[list(CHEXPERT_OBSERVATIONS)]
        if index is not None:
            frame.index = pd.Index(index)
        return frame


def get_labeler(spec: str | Path | None = None) -> RuleLabeler | ChexbertLabeler:
    """None or "rule": the rule-based labeler; a path: CheXbert from that local checkpoint."""
    if spec is None or str(spec).lower() in ("rule", "rb", "rule-based"):
        return RuleLabeler()
    return ChexbertLabeler(spec)


# ---------------------------------------------------------------------------------------------
# IU X-Ray reports shipped with torchxrayvision
# ---------------------------------------------------------------------------------------------
def iu_xray_reports_path() -> Path:
    """Path of NLMCXR_reports.tgz inside the installed torchxrayvision package."""
    import importlib.util

    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "torchxrayvision is not installed; pip install torchxrayvision==1.5.7"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "NLMCXR_reports.tgz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall torchxrayvision==1.5.7")
    return path


@lru_cache(maxsize=1)
def read_iu_xray_reports(path: str | None = None) -> pd.DataFrame:
    """IU X-Ray reports as a DataFrame: id, findings, impression, report (findings + impression)."""
    import xml.etree.ElementTree as ET

    rows = []
    with tarfile.open(path or iu_xray_reports_path()) as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".xml"):
                continue
            root = ET.parse(tar.extractfile(member)).getroot()
            sections = {
                (el.get("Label") or "").upper(): (el.text or "").strip()
                for el in root.iter("AbstractText")
            }
            findings, impression = sections.get("FINDINGS", ""), sections.get("IMPRESSION", "")
            rows.append({
                "id": Path(member.name).stem,
                "findings": findings,
                "impression": impression,
                "report": " ".join(s for s in (findings, impression) if s),
            })  # fmt: skip
    return pd.DataFrame(rows).sort_values("id", key=lambda s: s.str.zfill(8)).reset_index(drop=True)


def label_frequency_table(labels: pd.DataFrame) -> pd.DataFrame:
    """Counts of positive / uncertain / negative / not mentioned per observation."""
    table = pd.DataFrame({
        "positive": (labels == POS).sum(),
        "uncertain": (labels == UNC).sum(),
        "negative": (labels == NEG).sum(),
        "not mentioned": labels.isna().sum(),
    })  # fmt: skip
    table["positive %"] = (100 * table["positive"] / max(len(labels), 1)).round(1)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iu-xray", action="store_true", help="label the IU X-Ray reports")
    parser.add_argument("--text", help="label one report given on the command line")
    args = parser.parse_args(argv)
    if args.text:
        for obs, value in label_report(args.text).items():
            print(f"{obs:28s} {value}")
    if args.iu_xray:
        import time

        reports = read_iu_xray_reports()
        start = time.perf_counter()
        labels = label_reports(reports["report"], index=reports["id"])
        seconds = time.perf_counter() - start
        print(f"{len(labels)} IU X-Ray reports labelled in {seconds:.2f} s "
              f"({len(labels) / seconds:.0f} reports/s)")  # fmt: skip
        print(label_frequency_table(labels).to_string())


if __name__ == "__main__":
    main()
