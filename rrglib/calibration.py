"""Calibration: are the model's probabilities as reliable as they claim?

Token level: teacher-forced confidence (max softmax probability) against correctness on the
reference reports; ECE and reliability diagrams; a temperature T fitted on validation
(calibrated probabilities are softmax(logits / T); T > 1 softens an overconfident model).
Finding level: see `finding_confidence`.
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

from rrglib.attention import ArrayLike, as_numpy
from rrglib.data import ReportCollator, ReportDataset
from rrglib.devices import autocast
from rrglib.labeler import (
    MENTION_PATTERNS,
    SENTENCE_BOUNDARY,
    UNMENTION_PATTERNS,
    label_report,
    label_reports,
    normalise_with_map,
)
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
        order = np.argsort(confidence, kind="stable")
        idx = np.empty(len(confidence), dtype=int)
        chunks = np.array_split(order, n_bins)
        edges = [0.0]
        for b, chunk in enumerate(chunks):
            idx[chunk] = b
            edges.append(float(confidence[chunk].max()) if len(chunk) else edges[-1])
        edges[-1] = 1.0
        return idx, np.asarray(edges)
    raise ValueError(f"strategy must be 'width' or 'mass', got {strategy!r}")


def reliability_table(
    confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15, strategy: str = "width"
) -> pd.DataFrame:
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
    return pd.DataFrame({
        "bin": np.arange(n_bins), "lower": edges[:-1], "upper": edges[1:], "count": count,
        "confidence": mean_conf, "accuracy": acc, "gap": acc - mean_conf,
    })  # fmt: skip


def ece(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15, strategy: str = "width") -> float:
    """Expected calibration error: sum over bins of (bin share) * |accuracy - mean confidence|."""
    t = reliability_table(confidence, correct, n_bins, strategy)
    n = t["count"].sum()
    if n == 0:
        return float("nan")
    return float((t["count"] / n * t["gap"].abs()).fillna(0.0).sum())


def fit_temperature(logits: ArrayLike, targets: ArrayLike, max_iter: int = 100) -> float:
    """Temperature T minimising the NLL of softmax(logits / T) on (N, V) logits (LBFGS on log T)."""
    z = logits.detach().float().cpu() if isinstance(logits, torch.Tensor) else torch.as_tensor(logits, dtype=torch.float32)
    y = torch.as_tensor(as_numpy(targets), dtype=torch.long) if not isinstance(targets, torch.Tensor) else targets.long().cpu()
    log_t = torch.zeros((), requires_grad=True)  # log T keeps T positive without constraints
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def apply_temperature(logits: ArrayLike, temperature: float) -> np.ndarray:
    """Calibrated probabilities softmax(logits / T) along the last axis."""
    z = torch.as_tensor(as_numpy(logits)) / temperature
    return torch.softmax(z, dim=-1).numpy()


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
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        collate_fn=ReportCollator(model.tokenize_reports), generator=torch.Generator())
    yield from loader


@torch.no_grad()
def token_calibration(
    model: ReportGenerator,
    batches: Iterable[Mapping[str, Any]],
    temperature: float = 1.0,
    max_logit_tokens: int = 2048,
    mixed_precision: str = "no",
) -> TokenCalibration:
    """Confidence and correctness of every reference token under teacher forcing.

    `batches` are model-ready dicts (report_input_ids, report_attention_mask, images or
    features). Raw logits are kept for the first `max_logit_tokens` tokens (float16) to fit a
    temperature on; a vocabulary of 50k makes keeping all of them too costly. Fit T on a
    validation split, then rerun on the test split with `temperature=T`.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    p = model.num_prefix_tokens
    conf, corr, tgt, tlp, smp, kept, kept_t = [], [], [], [], [], [], []
    n_kept, offset = 0, 0
    try:
        for batch in batches:
            ids = batch["report_input_ids"].to(device)
            mask = batch["report_attention_mask"].to(device)
            inputs = {k: batch[k].to(device) for k in ("images", "features") if batch.get(k) is not None}
            with autocast(mixed_precision, device):
                out = model(ids, mask, return_logits=True, **inputs)
            # position t predicts token t + 1: the report's tokens are predicted from p - 1 on
            logits = out.logits[:, p - 1 : p - 1 + ids.shape[1]].float()
            valid = mask.bool()
            z, y = logits[valid], ids[valid]
            logp = torch.log_softmax(z / temperature, dim=-1)
            top, arg = logp.max(-1)
            conf.append(top.exp().cpu())
            corr.append((arg == y).cpu())
            tgt.append(y.cpu())
            tlp.append(logp.gather(-1, y[:, None])[:, 0].cpu())
            rows = torch.arange(ids.shape[0], device=device)[:, None].expand_as(ids)[valid]
            smp.append((rows + offset).cpu())
            offset += ids.shape[0]
            if n_kept < max_logit_tokens:
                take = min(max_logit_tokens - n_kept, len(y))
                kept.append(z[:take].half().cpu())
                kept_t.append(y[:take].cpu())
                n_kept += take
    finally:
        model.train(was_training)
    cat = lambda xs: torch.cat(xs).numpy() if xs else np.empty(0)  # noqa: E731
    return TokenCalibration(
        confidence=cat(conf), correct=cat(corr), targets=cat(tgt), target_logprob=cat(tlp),
        sample=cat(smp), logits=torch.cat(kept) if kept else None,
        logit_targets=torch.cat(kept_t).numpy() if kept_t else None,
    )  # fmt: skip


# -- finding level ----------------------------------------------------------------------------
def mention_spans(text: str, observation: str, asserted: Sequence[float] = (1.0, -1.0)) -> list[tuple[int, int]]:
    """Character spans in `text` of the labeler's mentions of `observation`, in those sentences
    whose own label for it is in `asserted` (so a negated mention elsewhere is left out)."""
    if observation not in MENTION_PATTERNS:
        return []
    spans = []
    start = 0
    # the labeler's sentence boundaries, found on the raw text so offsets stay those of `text`
    bounds = [(m.start(), m.end()) for m in SENTENCE_BOUNDARY.finditer(text)] + [(len(text), len(text))]
    for end, after in bounds:
        sentence = text[start:end]
        sentence_start, start = start, after
        if not sentence.strip() or label_report(sentence)[observation] not in asserted:
            continue
        norm, index = normalise_with_map(sentence)
        bad = [(m.start(), m.end()) for m in UNMENTION_PATTERNS[observation].finditer(norm)] if observation in UNMENTION_PATTERNS else []
        for m in MENTION_PATTERNS[observation].finditer(norm):
            if any(a <= m.start() and m.end() <= b for a, b in bad):
                continue
            spans.append((sentence_start + index[m.start()], sentence_start + index[m.end() - 1] + 1))
    return spans


def _retokenised_offsets(text: str, tokenizer: Any, n_logprobs: int) -> list[tuple[int, int]]:
    # `generate` strips the decoded text, and byte-level BPE tokenises "Small" and " Small"
    # differently; try the text as generated with the space it most likely began with too
    candidates = []
    for lead in (0, 1):
        enc = tokenizer(" " * lead + text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = [(max(a - lead, 0), max(b - lead, 0)) for a, b in enc["offset_mapping"]]
        if n_logprobs in (len(offsets), len(offsets) + 1):
            return offsets
        candidates.append(offsets)
    return candidates[0]


def _token_offsets(text: str, tokenizer: Any, token_ids: Sequence[int] | None, n_logprobs: int) -> list[tuple[int, int]]:
    if token_ids is None:
        return _retokenised_offsets(text, tokenizer, n_logprobs)
    # exact generated ids: decode growing prefixes; `generate` strips the decoded text, so shift
    offsets, prev = [], 0
    full = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    lead = len(full) - len(full.lstrip())
    for k in range(1, len(token_ids) + 1):
        end = len(tokenizer.decode(list(token_ids[:k]), skip_special_tokens=True))
        offsets.append((max(prev - lead, 0), max(end - lead, 0)))
        prev = end
    return offsets


def finding_confidence(
    texts: Sequence[str],
    logprobs: Sequence[Sequence[float]],
    tokenizer: Any,
    references: Sequence[str],
    token_ids: Sequence[Sequence[int]] | None = None,
    uncertain_positive: bool = True,
) -> pd.DataFrame:
    """Confidence of each stated finding and whether the reference agrees.

    For each generated report and each observation its labeler labels positive (or uncertain,
    with `uncertain_positive`, the CE convention): the mentions of that observation in the
    sentences that assert it (`mention_spans`); the tokens whose character range overlaps a
    mention; confidence = geometric mean of those tokens' probabilities = exp(mean log-prob).
    correct = the reference's label is positive (or uncertain) too, so the mean of `correct` is
    the precision of the stated findings. No Finding has no mention and is left out.

    Tokens are located by re-tokenising the text with offsets (as is, or with the leading space
    `generate` stripped), or exactly from `token_ids` (the generated ids). `logprobs` are `ReportGenerator.generate(...).logprobs`, one per token
    plus possibly a final eos. A report whose token count does not match gets NaN confidence.
    Returns rows (sample, observation, value, confidence, n_tokens, correct).
    """
    if not len(texts) == len(logprobs) == len(references):
        raise ValueError(f"{len(texts)} texts, {len(logprobs)} logprob lists, {len(references)} references")
    asserted = (1.0, -1.0) if uncertain_positive else (1.0,)
    gen, ref = label_reports(texts), label_reports(references)
    findings = [o for o in CHEXPERT_OBSERVATIONS if o in MENTION_PATTERNS]
    rows, misaligned = [], 0
    for i, (text, lps) in enumerate(zip(texts, logprobs, strict=True)):
        stated = [o for o in findings if gen.at[i, o] in asserted]
        if not stated:
            continue
        offsets = _token_offsets(text, tokenizer, None if token_ids is None else token_ids[i], len(lps))
        aligned = len(lps) in (len(offsets), len(offsets) + 1)
        misaligned += not aligned
        for obs in stated:
            lp = []
            if aligned:
                spans = mention_spans(text, obs, asserted)
                lp = [lps[t] for t, (s, e) in enumerate(offsets) if any(s < b and e > a for a, b in spans)]
            rows.append({
                "sample": i, "observation": obs, "value": gen.at[i, obs],
                "confidence": math.exp(float(np.mean(lp))) if lp else float("nan"),
                "n_tokens": len(lp), "correct": bool(ref.at[i, obs] in asserted),
            })  # fmt: skip
    if misaligned:
        warnings.warn(
            f"{misaligned} report(s): re-tokenised text does not match the number of log-probs; "
            "their findings get NaN confidence. Pass the generated `token_ids` for exact alignment.",
            stacklevel=2,
        )
    return pd.DataFrame(rows, columns=["sample", "observation", "value", "confidence", "n_tokens", "correct"])


def finding_calibration_summary(frame: pd.DataFrame, n_bins: int = 10, strategy: str = "width") -> dict[str, float]:
    """Counts, precision, mean confidence of true and false positives, and ECE of stated findings."""
    f = frame.dropna(subset=["confidence"])
    tp, fp = f[f["correct"]], f[~f["correct"]]
    return {
        "n": len(f),
        "precision": float(f["correct"].mean()) if len(f) else float("nan"),
        "confidence": float(f["confidence"].mean()) if len(f) else float("nan"),
        "confidence_tp": float(tp["confidence"].mean()) if len(tp) else float("nan"),
        "confidence_fp": float(fp["confidence"].mean()) if len(fp) else float("nan"),
        "ece": ece(f["confidence"].to_numpy(), f["correct"].to_numpy(float), n_bins, strategy),
    }


def plot_reliability(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    n_bins: int = 15,
    strategy: str = "width",
    ax: Any = None,
) -> Figure:
    """Reliability diagram: accuracy against mean confidence per bin, one line per named curve
    (ECE in the legend), with the diagonal of perfect calibration."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5)) if ax is None else (ax.figure, ax)
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1)
    for name, (conf, corr) in curves.items():
        t = reliability_table(conf, corr, n_bins, strategy)
        t = t[t["count"] > 0]
        e = ece(conf, corr, n_bins, strategy)
        ax.plot(t["confidence"], t["accuracy"], marker="o", label=f"{name} (ECE {e:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    ax.legend(loc="upper left")
    return fig
