"""Calibration: are the model's probabilities as reliable as they claim?

Token level: teacher-forced confidence (max softmax probability) against correctness on the
reference reports; ECE and reliability diagrams; a temperature T fitted on validation
(calibrated probabilities are softmax(logits / T); T > 1 softens an overconfident model).
Finding level, two confidences of a finding a greedy report states: `finding_confidence` (geometric
mean probability of its mention tokens, as in the paper; it skips the decision to state it) and
`stating_confidence` (the fraction of sampled reports that state it: includes the decision).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from rrglib import labeler
from rrglib.attention import ArrayLike, as_numpy
from rrglib.data import ReportCollator, ReportDataset
from rrglib.devices import autocast
from rrglib.labels import CHEXPERT_OBSERVATIONS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from rrglib.model import ReportGenerator


def _bin_index(confidence: np.ndarray, n_bins: int, strategy: str) -> tuple[np.ndarray, np.ndarray]:
    """Bin of every confidence, and the bin edges."""
    if strategy == "width":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        # bins are (lo, hi]; a confidence of exactly 0 joins the first bin
        return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1), edges
    if strategy == "mass":
        # equal-count bins over the sorted confidences (ties may straddle a boundary)
        idx = np.empty(len(confidence), dtype=int)
        edges = [0.0]
        for b, chunk in enumerate(np.array_split(np.argsort(confidence, kind="stable"), n_bins)):
            idx[chunk] = b
            edges.append(float(confidence[chunk].max()) if len(chunk) else edges[-1])
        edges[-1] = 1.0
        return idx, np.asarray(edges)
    raise ValueError(f"strategy must be 'width' or 'mass', got {strategy!r}")


def reliability_table(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15,
                      strategy: str = "width") -> pd.DataFrame:
    """Per bin: lower/upper edge, count, mean confidence, accuracy, gap (accuracy - confidence)."""
    conf, corr = as_numpy(confidence).ravel(), as_numpy(correct).ravel()
    if conf.shape != corr.shape:
        raise ValueError(f"{conf.size} confidences but {corr.size} correctness values")
    keep = ~np.isnan(conf)
    conf, corr = conf[keep], corr[keep]
    idx, edges = _bin_index(conf, n_bins, strategy)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, conf, n_bins) / count
        acc = np.bincount(idx, corr, n_bins) / count
    return pd.DataFrame({"bin": np.arange(n_bins), "lower": edges[:-1], "upper": edges[1:], "count": count,
                         "confidence": mean_conf, "accuracy": acc, "gap": acc - mean_conf})


def ece(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15, strategy: str = "width") -> float:
    """Expected calibration error: sum over bins of (bin share) * |accuracy - mean confidence|."""
    t = reliability_table(confidence, correct, n_bins, strategy)
    n = t["count"].sum()
    return float((t["count"] / n * t["gap"].abs()).fillna(0.0).sum()) if n else float("nan")


def fit_temperature(logits: ArrayLike, targets: ArrayLike, max_iter: int = 100) -> float:
    """Temperature T minimising the NLL of softmax(logits / T) on (N, V) logits (LBFGS on log T)."""
    z = torch.as_tensor(as_numpy(logits), dtype=torch.float32)
    y = torch.as_tensor(as_numpy(targets)).long()
    log_t = torch.zeros((), requires_grad=True)  # log T keeps T positive without constraints
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    # NLL is unimodal in log T: clamping gives the optimum within [0.05, 20]; a fit that runs off
    # towards 0 or infinity (a few separable points) is not a calibration
    return float(log_t.detach().clamp(-3.0, 3.0).exp())


@dataclass
class TokenCalibration:
    """Teacher-forced token predictions on reference reports (one entry per report token + eos)."""

    confidence: np.ndarray  # max softmax probability (at the given temperature)
    correct: np.ndarray  # argmax == reference token
    targets: np.ndarray  # reference token ids
    target_logprob: np.ndarray  # log p(reference token)
    sample: np.ndarray  # index of the report in iteration order
    logits: torch.Tensor | None = None  # (n, V) float16 for the first `max_logit_tokens` tokens
    logit_targets: np.ndarray | None = None

    def ece(self, n_bins: int = 15, strategy: str = "width") -> float:
        return ece(self.confidence, self.correct, n_bins, strategy)


def report_batches(model: ReportGenerator, dataset: ReportDataset, batch_size: int = 16) -> Iterator[dict[str, Any]]:
    """Model-ready teacher-forcing batches (images + tokenised reports) over a dataset, in order."""
    yield from DataLoader(dataset, batch_size=batch_size, shuffle=False,
                          collate_fn=ReportCollator(model.tokenize_reports), generator=torch.Generator())


@torch.no_grad()
def token_calibration(model: ReportGenerator, batches: Iterable[Mapping[str, Any]], temperature: float = 1.0,
                      max_logit_tokens: int = 2048, mixed_precision: str = "no") -> TokenCalibration:
    """Confidence and correctness of every reference token of model-ready `batches` under teacher
    forcing. Logits are kept (float16) for the first `max_logit_tokens` tokens only, to fit T on
    (all of them, at a 50k vocabulary, cost too much): fit T on validation, rerun on test."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    p = model.num_prefix_tokens
    cols: dict[str, list[torch.Tensor]] = {k: [] for k in ("confidence", "correct", "targets",
                                                           "target_logprob", "sample", "logits")}
    n_reports = n_kept = 0
    try:
        for batch in batches:
            ids = batch["report_input_ids"].to(device)
            mask = batch["report_attention_mask"].to(device)
            inputs = {k: batch[k].to(device) for k in ("images", "features") if batch.get(k) is not None}
            with autocast(mixed_precision, device):
                out = model(ids, mask, return_logits=True, **inputs)
            # position t predicts token t + 1: the report's tokens are predicted from p - 1 on
            valid = mask.bool()
            z, y = out.logits[:, p - 1 : p - 1 + ids.shape[1]].float()[valid], ids[valid]
            logp = torch.log_softmax(z / temperature, dim=-1)
            top, arg = logp.max(-1)
            rows = torch.arange(ids.shape[0], device=device)[:, None].expand_as(ids)[valid]
            take = min(max_logit_tokens - n_kept, len(y))
            for k, v in (("confidence", top.exp()), ("correct", arg == y), ("targets", y),
                         ("target_logprob", logp.gather(-1, y[:, None])[:, 0]),
                         ("sample", rows + n_reports), ("logits", z[:take].half())):
                cols[k].append(v.cpu())
            n_reports, n_kept = n_reports + ids.shape[0], n_kept + take
    finally:
        model.train(was_training)
    data = {k: torch.cat(v).numpy() if v else np.empty(0) for k, v in cols.items() if k != "logits"}
    kept = torch.cat(cols["logits"]) if n_kept else None
    return TokenCalibration(**data, logits=kept,
                            logit_targets=data["targets"][:n_kept] if n_kept else None)


# -- finding level ----------------------------------------------------------------------------
def mention_spans(text: str, observation: str, asserted: Sequence[float] = (1.0, -1.0)) -> list[tuple[int, int]]:
    """Character spans in `text` of the labeler's mentions of `observation`, in those sentences
    whose own label for it is in `asserted` (so a negated mention elsewhere is left out)."""
    if observation not in labeler.MENTION_PATTERNS:
        return []
    spans, start = [], 0
    # the labeler's sentence boundaries, found on the raw text so offsets stay those of `text`
    bounds = [(m.start(), m.end()) for m in labeler.SENTENCE_BOUNDARY.finditer(text)] + [(len(text), len(text))]
    for end, after in bounds:
        sentence, sentence_start, start = text[start:end], start, after
        if not sentence.strip() or labeler.label_report(sentence)[observation] not in asserted:
            continue
        norm, index = labeler.normalise_with_map(sentence)
        unmention = labeler.UNMENTION_PATTERNS.get(observation)
        bad = [(m.start(), m.end()) for m in unmention.finditer(norm)] if unmention else []
        for m in labeler.MENTION_PATTERNS[observation].finditer(norm):
            if not any(a <= m.start() and m.end() <= b for a, b in bad):
                spans.append((sentence_start + index[m.start()], sentence_start + index[m.end() - 1] + 1))
    return spans


def token_offsets(text: str, tokenizer: Any, token_ids: Sequence[int]) -> list[tuple[int, int]]:
    """Character range in `text` of each generated token, by decoding growing prefixes of its ids."""
    # `generate` strips the decoded text: shift by the leading space it removed
    full = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    lead = len(full) - len(full.lstrip())
    ends = [max(len(tokenizer.decode(list(token_ids[:k]), skip_special_tokens=True)) - lead, 0)
            for k in range(1, len(token_ids) + 1)]
    return list(zip([0, *ends[:-1]], ends, strict=True))


def finding_confidence(texts: Sequence[str], logprobs: Sequence[Sequence[float]], tokenizer: Any,
                       references: Sequence[str], token_ids: Sequence[Sequence[int]],
                       uncertain_positive: bool = True) -> pd.DataFrame:
    """Rows (sample, observation, value, confidence, n_tokens, correct), one per finding a generated
    report states (positive, or uncertain with `uncertain_positive`: the CE convention).

    confidence = exp(mean log-prob) of the tokens overlapping its asserted mentions (`mention_spans`);
    correct = the reference states it too, so mean(correct) is the precision of stated findings.
    `token_ids` and `logprobs` are `generate`'s; a report whose two do not align gets NaN.
    """
    if not len(texts) == len(logprobs) == len(references):
        raise ValueError(f"{len(texts)} texts, {len(logprobs)} logprob lists, {len(references)} references")
    asserted = (1.0, -1.0) if uncertain_positive else (1.0,)
    gen, ref = labeler.label_reports(texts), labeler.label_reports(references)
    findings = [o for o in CHEXPERT_OBSERVATIONS if o in labeler.MENTION_PATTERNS]
    rows, misaligned = [], 0
    for i, (text, lps) in enumerate(zip(texts, logprobs, strict=True)):
        stated = [o for o in findings if gen.at[i, o] in asserted]
        if not stated:
            continue
        offsets = token_offsets(text, tokenizer, token_ids[i])
        aligned = len(lps) in (len(offsets), len(offsets) + 1)
        misaligned += not aligned
        for obs in stated:
            spans = mention_spans(text, obs, asserted) if aligned else []
            lp = [lps[t] for t, (s, e) in enumerate(offsets) if any(s < b and e > a for a, b in spans)]
            rows.append({"sample": i, "observation": obs, "value": gen.at[i, obs],
                         "confidence": math.exp(float(np.mean(lp))) if lp else float("nan"),
                         "n_tokens": len(lp), "correct": bool(ref.at[i, obs] in asserted)})
    if misaligned:
        warnings.warn(f"{misaligned} report(s): token_ids and logprobs differ in length (not from one "
                      "`generate` call?); their findings get NaN confidence.", stacklevel=2)
    return pd.DataFrame(rows, columns=["sample", "observation", "value", "confidence", "n_tokens", "correct"])


def finding_calibration_summary(frame: pd.DataFrame, n_bins: int = 10, strategy: str = "width") -> dict[str, float]:
    """Counts, precision, mean confidence of true and false positives, and ECE of stated findings."""
    f = frame.dropna(subset=["confidence"])
    mean = lambda s: float(s.mean()) if len(s) else float("nan")  # noqa: E731
    return {"n": len(f), "precision": mean(f["correct"]), "confidence": mean(f["confidence"]),
            "confidence_tp": mean(f[f["correct"]]["confidence"]),
            "confidence_fp": mean(f[~f["correct"]]["confidence"]),
            "ece": ece(f["confidence"].to_numpy(), f["correct"].to_numpy(float), n_bins, strategy)}


def plot_reliability(curves: Mapping[str, tuple[ArrayLike, ArrayLike]], n_bins: int = 15,
                     strategy: str = "width", ax: Any = None, show_counts: bool = False) -> Figure:
    """Reliability diagram: accuracy against mean confidence per bin, one line per named curve
    (ECE in the legend), with the diagonal of perfect calibration; `show_counts` writes each
    bin's count beside its point (a bin of 2 findings says little)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5)) if ax is None else (ax.figure, ax)
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1)
    for name, (conf, corr) in curves.items():
        t = reliability_table(conf, corr, n_bins, strategy)
        t = t[t["count"] > 0]
        line, = ax.plot(t["confidence"], t["accuracy"], marker="o",
                        label=f"{name} (ECE {ece(conf, corr, n_bins, strategy):.3f})")
        if show_counts:
            for x, y, n in zip(t["confidence"], t["accuracy"], t["count"], strict=True):
                ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(4, -10),
                            fontsize=7, color=line.get_color())
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    ax.legend(loc="upper left")
    return fig


# -- finding level, with the decision ---------------------------------------------------------
STATED = (1.0, -1.0)  # positive or uncertain: the evaluation convention for "stated"


def stated_findings(texts: Sequence[str]) -> pd.DataFrame:
    """Boolean frame (report x observation): does the report state the finding (label 1 or -1)."""
    labels = labeler.label_reports(list(texts))
    return labels.isin(STATED)


def stating_fractions(generator: Any, batches: Iterable[Mapping[str, Any]], n_samples: int = 10,
                      max_new_tokens: int = 100, temperature: float = 1.0, seed: int = 0,
                      device: str | torch.device = "cpu", mixed_precision: str = "no",
                      **greedy: Any) -> tuple[list[str], list[str], pd.DataFrame]:
    """Greedy reports, reference reports and, per study, the fraction of `n_samples` sampled
    reports (do_sample, `temperature`) that state each observation, over `batches` with "images"
    (or "features") and "reports". `generator` needs `generate(images=..., do_sample=...,
    temperature=..., max_new_tokens=...)` returning `.texts`; `greedy` goes to the greedy call;
    inputs are moved to `device` and run under `mixed_precision` autocast.

    Why N = 10 (the default): each study costs N + 1 generations, linear in N. The fraction is an
    unbiased estimate of the model's own probability of stating the finding for any N, so N only
    sets its noise: resolution 1/N and a standard error of at most 0.5 / sqrt(N) = 0.16 per study,
    which averages down over the tens of findings whose TP and FP means are compared; N = 20 would
    double the cost to cut that noise by only 1/sqrt(2). Sampling is seeded once (`seed`), so the
    fractions are reproducible on one machine.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    torch.manual_seed(seed)
    columns = stated_findings([""]).columns
    greedy_texts, references, frames = [], [], []
    for batch in batches:
        inputs = {k: batch[k].to(device) for k in ("images", "features") if batch.get(k) is not None}
        references += list(batch["reports"])
        with autocast(mixed_precision, device):
            # the greedy report is the prediction; `greedy` (e.g. the run's generation config) may set its length
            greedy_texts += generator.generate(**inputs, **{"max_new_tokens": max_new_tokens, **greedy,
                                                            "do_sample": False}).texts
            counts = 0.0
            for _ in range(n_samples):
                texts = generator.generate(**inputs, do_sample=True, temperature=temperature,
                                           max_new_tokens=max_new_tokens).texts
                counts = counts + stated_findings(texts).to_numpy(float)
        frames.append(pd.DataFrame(counts / n_samples, columns=columns))
    empty = pd.DataFrame(columns=columns, dtype=float)
    return greedy_texts, references, pd.concat(frames, ignore_index=True) if frames else empty


def stating_confidence(greedy_texts: Sequence[str], references: Sequence[str],
                       fractions: pd.DataFrame) -> pd.DataFrame:
    """Rows (sample, observation, confidence, correct), one per finding a greedy report states:
    confidence = the study's sampled stating fraction of it (`stating_fractions`); correct = the
    reference states it too (so mean(correct) is the precision of the predicted findings)."""
    if not len(greedy_texts) == len(references) == len(fractions):
        raise ValueError(f"{len(greedy_texts)} greedy reports, {len(references)} references, "
                         f"{len(fractions)} rows of stating fractions: one each per study")
    pred, ref = stated_findings(greedy_texts), stated_findings(references)
    findings = [o for o in CHEXPERT_OBSERVATIONS if o in labeler.MENTION_PATTERNS]
    rows = [{"sample": i, "observation": o, "confidence": float(fractions.iloc[i][o]), "correct": bool(ref.at[i, o])}
            for i in range(len(pred)) for o in findings if pred.at[i, o]]
    return pd.DataFrame(rows, columns=["sample", "observation", "confidence", "correct"])


def confidence_logit(confidence: ArrayLike, n_samples: int) -> np.ndarray:
    """logit of a sampled fraction clipped to [1/(2N), 1 - 1/(2N)] (0 and 1 have no finite logit)."""
    eps = 1.0 / (2 * n_samples)
    p = np.clip(as_numpy(confidence).astype(float), eps, 1 - eps)
    return np.log(p / (1 - p))


MIN_FIT_FINDINGS = 20  # validation findings (both outcomes present) below which no temperature is fitted


def fit_confidence_temperature(confidence: ArrayLike, correct: ArrayLike, n_samples: int) -> float:
    """Temperature T such that sigmoid(logit(confidence) / T) fits `correct` best (`fit_temperature`
    on the two-class logits [0, logit]): fit on validation findings, apply with `scale_confidence`."""
    z = confidence_logit(confidence, n_samples)
    return fit_temperature(np.stack([np.zeros_like(z), z], axis=1), as_numpy(correct).astype(int))


def scale_confidence(confidence: ArrayLike, temperature: float, n_samples: int) -> np.ndarray:
    """sigmoid(logit(clipped confidence) / T): the temperature-scaled confidence."""
    return 1.0 / (1.0 + np.exp(-confidence_logit(confidence, n_samples) / temperature))


def tp_fp_confidence(frame: pd.DataFrame, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Counts, mean confidence of true (TP) and false positives (FP), and their difference TP - FP,
    with percentile bootstrap intervals over studies (`sample`): findings of one study move together.
    A resample with no TP (or no FP) is skipped for that mean; NaN when a group is empty."""
    f = frame.dropna(subset=["confidence"])
    tp, fp = f[f["correct"]], f[~f["correct"]]
    out: dict[str, float] = {"n_tp": len(tp), "n_fp": len(fp), "n_studies": int(f["sample"].nunique()),
                             "confidence_tp": float(tp["confidence"].mean()) if len(tp) else float("nan"),
                             "confidence_fp": float(fp["confidence"].mean()) if len(fp) else float("nan")}
    out["difference"] = out["confidence_tp"] - out["confidence_fp"]
    # per study: sum and count of TP and FP confidences; a resample sums the drawn studies
    g = f.assign(c_tp=f["confidence"] * f["correct"], n_tp=f["correct"].astype(float),
                 c_fp=f["confidence"] * ~f["correct"], n_fp=(~f["correct"]).astype(float))
    per = g.groupby("sample")[["c_tp", "n_tp", "c_fp", "n_fp"]].sum().to_numpy()
    draws = {"confidence_tp": [], "confidence_fp": [], "difference": []}
    if len(per):
        rng = np.random.default_rng(seed)
        tot = per[rng.integers(0, len(per), (n_boot, len(per)))].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            m_tp, m_fp = tot[:, 0] / tot[:, 1], tot[:, 2] / tot[:, 3]
        draws = {"confidence_tp": m_tp, "confidence_fp": m_fp, "difference": m_tp - m_fp}
    a = (1 - level) / 2
    for k, v in draws.items():
        v = np.asarray(v)[~np.isnan(np.asarray(v, dtype=float))]
        lo, hi = (np.quantile(v, [a, 1 - a]) if len(v) else (float("nan"), float("nan")))
        out[f"{k}_lo"], out[f"{k}_hi"] = float(lo), float(hi)
    return out
