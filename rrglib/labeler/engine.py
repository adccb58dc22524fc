"""The matching engine of the rule-based labeler (phrase data: ``rrglib.labeler.phrases``).

Values follow CheXpert: 1.0 positive, 0.0 negative, -1.0 uncertain, NaN not mentioned. Fixed
assertions ("heart size is normal") are matched first and masked; then finding mentions (less
look-alikes and mentions inside a longer mention of another observation), each valued by the
nearest negation / uncertainty trigger whose scope covers it (NegEx style; see ``_status``).
Positive beats uncertain beats negative; No Finding = 1 when nothing but Support Devices is
positive or uncertain, else NaN. A text of nothing but de-identification tokens and punctuation
is "no report": all NaN, so that an empty generation is not rewarded as a normal study.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections.abc import Iterable
from typing import Any

import pandas as pd

from rrglib.labeler import phrases
from rrglib.labels import CHEXPERT_OBSERVATIONS

POS, NEG, UNC, NAN = 1.0, 0.0, -1.0, float("nan")

_DEID = re.compile(r"\b[xX]{2,}\b|_{2,}")
# public: rrglib.calibration locates findings inside sentences with the same rules
SENTENCE_BOUNDARY = re.compile(r"(?<!\bvs)(?<!\d)\.(?!\d)|[;!\n]|\s\d+\.\s|\s\d+\)\s")
_WORD = re.compile(r"[a-z0-9]")
_SPACES = re.compile(r"[ \t\r\f\v]+")


def _compile(alternatives: Iterable[str], slash_joins: bool = True) -> re.Pattern[str]:
    # Longest alternatives first so that "no evidence of" wins over "no". A slash joins words
    # into one token for triggers ("and/or", "r/o") but separates findings ("atelectasis/scar").
    ordered = sorted(alternatives, key=len, reverse=True)
    words = [p for p in ordered if p != r"\?"]
    edge = r"[\w/]" if slash_joins else r"\w"
    pattern = rf"(?<!{edge})(?:" + "|".join(words) + rf")(?!{edge})"
    if len(words) < len(ordered):  # a question mark needs no word boundary: "pneumonia?"
        pattern += r"|\?"
    return re.compile(pattern)


# per observation: what mentions it, and look-alikes that do not ("heart size" is not cardiomegaly)
MENTION_PATTERNS = {o: _compile(ps, slash_joins=False) for o, ps in phrases.MENTIONS.items()}
UNMENTION_PATTERNS = {o: _compile(ps, slash_joins=False) for o, ps in phrases.UNMENTIONS.items()}


def _grouped(fixed: list[tuple[str, tuple[str, ...]]]) -> list[tuple]:
    groups: dict[tuple[str, ...], list[str]] = {}
    for phrase, observations in fixed:
        groups.setdefault(observations, []).append(phrase)
    return [(_compile(ps), obs, phrases.FIXED_GUARDS[obs[0]]) for obs, ps in groups.items()]


_NORMAL_RE = _grouped(phrases.NORMAL_PHRASES)
_UNCERTAIN_RE = _grouped(phrases.UNCERTAIN_PHRASES)
_TRIGGER_RE = [(kind, direction, _compile(ps)) for kind, direction, ps in phrases.TRIGGERS]


def _lower(text: str) -> str:
    # A few characters lower-case to two ("İ"); keep those as they are so that every
    # character of the result has one source character (see normalise_with_map).
    low = text.lower()
    return low if len(low) == len(text) else "".join(
        c if len(c.lower()) > 1 else c.lower() for c in text)


def normalise(text: str | None) -> str:
    """Lower-case, neutralise de-identification tokens and hyphens, collapse whitespace."""
    if not text:
        return ""
    text = _lower(_DEID.sub(" xxxx ", str(text)))
    return _SPACES.sub(" ", text.replace("-", " "))


def normalise_with_map(text: str | None) -> tuple[str, list[int]]:
    """``normalise(text)`` and, for each of its characters, the index in ``text`` it came from
    (a de-identification token's " xxxx " maps to the token's first character)."""
    if not text:
        return "", []
    text, chars, index, pos = str(text), [], [], 0
    for m in itertools.chain(_DEID.finditer(text), [None]):
        stop = m.start() if m else len(text)
        chars.extend(text[pos:stop])
        index.extend(range(pos, stop))
        if m:
            chars.extend(" xxxx ")
            index.extend([m.start()] * 6)
            pos = m.end()
    out, out_index = [], []
    for c, i in zip(_lower("".join(chars)), index, strict=True):
        c = " " if c in " \t\r\f\v-" else c
        if c != " " or not out or out[-1] != " ":  # whitespace runs collapse to one space
            out.append(c)
            out_index.append(i)
    return "".join(out), out_index


def _mask(text: str, spans: Iterable[tuple[int, int]]) -> str:
    chars = list(text)
    for a, b in spans:
        chars[a:b] = " " * (b - a)
    return "".join(chars)


def _triggers(sentence: str) -> list[tuple[int, int, str, str]]:
    """All triggers in a sentence as (start, end, kind, direction), each span found once."""
    found, work = [], sentence
    for kind, direction, pattern in _TRIGGER_RE:
        spans = [(m.start(), m.end()) for m in pattern.finditer(work)]
        found.extend((a, b, kind, direction) for a, b in spans)
        if spans:
            work = _mask(work, spans)
    return sorted(found)


def _status(start: int, end: int, triggers: list[tuple], sentence: str) -> float:
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
            if kind == "term" or len(sentence[end:a].split()) > phrases.POST_SCOPE_WORDS:
                break
            if direction in ("post", "both"):
                post = (a - end, kind)
                break
    if pre is None and post is None:
        return POS
    chosen = pre[1] if pre is not None and (post is None or pre[0] <= post[0]) else post[1]
    return {"neg": NEG, "unc": UNC}.get(chosen, POS)  # a pseudo-trigger leaves it positive


def _combine(old: float, new: float) -> float:
    """Positive beats uncertain beats negative beats not mentioned."""
    rank = {POS: 3, UNC: 2, NEG: 1}
    return new if math.isnan(old) or rank[new] > rank[old] else old


def _without_gaps(m: re.Match[str]) -> list[tuple[int, int]]:
    """The span of a fixed phrase less its gap groups: the anchor and the qualifier."""
    spans, start = [], m.start()
    for i in range(1, (m.re.groups or 0) + 1):
        a, b = m.span(i)
        if a >= 0:
            spans.append((start, a))
            start = b
    return [*spans, (start, m.end())]


def _label_text(text: str, labels: dict[str, float]) -> None:
    """Label normalised text in place. Patterns run once over the whole report (sentences
    joined by "|", which no pattern crosses); triggers are searched per sentence, and only in
    sentences that hold a mention."""
    sentences = [f" {s.strip()} " for s in SENTENCE_BOUNDARY.split(text) if s.strip()]  # padded
    joined = "|".join(sentences)
    fixed: list[tuple[int, int]] = []
    for pattern_list, value in ((_UNCERTAIN_RE, UNC), (_NORMAL_RE, NEG)):
        for pattern, observations, guards in pattern_list:
            if not any(g in joined for g in guards):
                continue
            for m in pattern.finditer(joined):
                fixed.extend(_without_gaps(m))
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
    # drop a mention strictly inside a longer mention of another observation
    mentions = [(a, b, o) for a, b, o in mentions if not any(
        o2 != o and a2 <= a and b <= b2 and (b2 - a2) > (b - a) for a2, b2, o2 in mentions)]
    starts = list(itertools.accumulate((len(s) + 1 for s in sentences), initial=0))
    by_sentence: dict[int, list[tuple[int, int, str]]] = {}
    for a, b, obs in mentions:
        by_sentence.setdefault(bisect.bisect_right(starts, a) - 1, []).append((a, b, obs))
    for i, items in by_sentence.items():
        sentence, offset = sentences[i], starts[i]
        triggers = _triggers(sentence)
        for a, b, obs in items:
            labels[obs] = _combine(labels[obs], _status(a - offset, b - offset, triggers, sentence))


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
    frame = pd.DataFrame([label_report(t) for t in texts], columns=list(CHEXPERT_OBSERVATIONS),
                         dtype=float)
    return frame if index is None else frame.set_axis(pd.Index(index))


class RuleLabeler:
    """The rule-based labeler behind a small object interface shared with CheXbert."""

    tag = "RB"  # metric names: F1-RB-14-micro ...

    def label_reports(self, texts: Iterable[str | None], index: Any = None) -> pd.DataFrame:
        return label_reports(texts, index=index)


def label_frequency_table(labels: pd.DataFrame) -> pd.DataFrame:
    """Counts of positive / uncertain / negative / not mentioned per observation."""
    table = pd.DataFrame({"positive": (labels == POS).sum(), "uncertain": (labels == UNC).sum(),
                          "negative": (labels == NEG).sum(), "not mentioned": labels.isna().sum()})
    table["positive %"] = (100 * table["positive"] / max(len(labels), 1)).round(1)
    return table
