"""Attention to the soft visual prompts: how much of the LLM's attention reads the image.

Prompt attention share: for one query token, the attention mass on the K soft visual prompts
(positions [0, K)). Normalised share: that share divided by the share uniform attention over the
positions the query may attend to would give, (unmasked positions in [0, K)) / (unmasked
positions up to and including the query). 1 = the prompts get what their length alone predicts;
> 1 = the LLM looks at the image more than at an average token.

Intervals are over studies, the unit that varies: each study's share is first averaged over heads
(and tokens), then a t interval is taken across studies. Real vs deranged images: the same reports,
teacher-forced, read once with their own image and once with another study's (`rrglib.data.derangement`),
so positions and text are identical and only the image-report association differs; the paired
difference per study gets a t interval and a paired t-test. (Greedy generation cannot make this
contrast: it sees no study-specific text, so a deranged run is a relabelling of the real one.)

The weights come from `ReportGenerator.generate(output_attentions=True)` or, teacher-forced, from the
LLM's forward pass (eager attention only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from rrglib.devices import autocast
from rrglib.model import require_attentions

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from rrglib.model import ReportGenerator

ArrayLike = np.ndarray | torch.Tensor


def as_numpy(x: ArrayLike) -> np.ndarray:
    """A float numpy copy of a tensor or array."""
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=float)


def prompt_attention_share(weights: Sequence[ArrayLike], prompts: int | slice,
                           attention_mask: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer attention (B, H, q, L) -> (share, normalised share), each (layers, B, H, q). Queries
    are the last q of L positions (KV cache); `attention_mask` (B, >= L) marks padding with 0.
    `prompts`: the prompts' positions (`ReportGenerator.prompt_positions`), or their count from 0."""
    first, end = (0, prompts) if isinstance(prompts, int) else (prompts.start or 0, prompts.stop)
    shares, norms = [], []
    for w in weights:
        w = as_numpy(w)
        b, _, q, length = w.shape
        mask = np.ones((b, length)) if attention_mask is None else as_numpy(attention_mask)[:, :length]
        # query j sits at position length - q + j and (causal) sees positions 0 .. that position
        cum = np.cumsum(mask, axis=1)
        seen = cum[:, length - q :]  # (B, q) unmasked positions visible to each query
        before = cum[:, first - 1] if first > 0 else 0
        prompts_visible = (cum[:, np.minimum(np.arange(length - q, length), end - 1)].T - before).T
        with np.errstate(divide="ignore", invalid="ignore"):
            expected = np.where(seen > 0, prompts_visible / seen, np.nan)  # (B, q)
            share = w[..., first:end].sum(-1)  # (B, H, q)
            norms.append(share / expected[:, None, :])
        shares.append(share)
    return np.stack(shares), np.stack(norms)


def generation_prompt_share(step_attentions: Sequence[Sequence[ArrayLike]], prompts: int | slice,
                            attention_mask: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`generate(output_attentions=True).attentions` -> (share, normalised), each (steps, layers, B, H).
    Step s chooses generated token s; its query is the last position (step 0: the prefill's last row)."""
    steps = [prompt_attention_share([as_numpy(w)[:, :, -1:, :] for w in layers], prompts, attention_mask)
             for layers in step_attentions]
    return np.stack([s[..., 0] for s, _ in steps]), np.stack([n[..., 0] for _, n in steps])


def attention_frame(share: np.ndarray, normalised: np.ndarray, valid: np.ndarray | None = None,
                    sample_offset: int = 0) -> pd.DataFrame:
    """(steps, layers, B, H) arrays -> tidy rows (sample, step, layer, depth, head, share, normalised_share).
    `valid` (steps, B) drops steps after a sample ended; depth = layer / (layers - 1) spans model sizes."""
    steps, layers, b, h = share.shape
    grid = np.meshgrid(np.arange(steps), np.arange(layers), np.arange(b), np.arange(h), indexing="ij")
    keep = np.ones(share.shape, bool) if valid is None else np.broadcast_to(valid[:, None, :, None], share.shape)
    step, layer, sample, head = (g[keep] for g in grid)
    return pd.DataFrame({
        "sample": (sample + sample_offset).astype(np.int32),
        "step": step.astype(np.int32),
        "layer": layer.astype(np.int16),
        "depth": (layer / max(layers - 1, 1)).astype(np.float32),
        "head": head.astype(np.int16),
        "share": share[keep].astype(np.float32),
        "normalised_share": normalised[keep].astype(np.float32),
    })  # fmt: skip


@torch.no_grad()
def prompt_attention(model: ReportGenerator, images: torch.Tensor | None = None,
                     features: torch.Tensor | None = None, max_new_tokens: int = 60,
                     batch_size: int = 8, mixed_precision: str = "no") -> pd.DataFrame:
    """Greedy generation with attention maps (eager attention only) -> `attention_frame` over all
    samples, without the steps after each eos; on the model's device under `mixed_precision`."""
    source = images if features is None else features
    if source is None:
        raise ValueError("pass images or cached encoder features")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    frames = []
    try:
        for start in range(0, len(source), batch_size):
            chunk = source[start : start + batch_size].to(device)
            inputs = {"features": chunk} if features is not None else {"images": chunk}
            with autocast(mixed_precision, device):
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, output_attentions=True)
            share, norm = generation_prompt_share(out.attentions, model.prompt_positions)
            # step s chose token s; a sample's ids stop at its eos, later steps are padding
            lengths = np.array([len(ids) for ids in out.token_ids])
            valid = np.arange(share.shape[0])[:, None] < lengths[None, :]  # (steps, B)
            frames.append(attention_frame(share, norm, valid, sample_offset=start))
    finally:
        model.train(was_training)
    frame = pd.concat(frames, ignore_index=True)
    return frame.sort_values(["sample", "step", "layer", "head"], kind="stable", ignore_index=True)


@torch.no_grad()
def teacher_forced_attention(model: ReportGenerator, reports: Sequence[str], images: torch.Tensor | None = None,
                             features: torch.Tensor | None = None, batch_size: int = 8,
                             mixed_precision: str = "no") -> pd.DataFrame:
    """Each report teacher-forced after its image -> rows (sample, layer, depth, head, share,
    normalised_share), averaged over the report's tokens (+ eos, padding excluded). Pass the same
    reports with deranged images for the real-vs-deranged contrast (eager attention only)."""
    source = images if features is None else features
    if source is None or len(source) != len(reports):
        raise ValueError(f"pass one image (or row of features) per report: got {len(reports)} reports and "
                         f"{'no images' if source is None else len(source)}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    start_q, frames = model.num_prefix_tokens, []
    try:
        for start in range(0, len(source), batch_size):
            chunk = source[start : start + batch_size].to(device)
            tok = model.tokenize_reports(list(reports[start : start + batch_size]))
            with autocast(mixed_precision, device):
                prompts = model.visual_prompts(**({"features": chunk} if features is not None else {"images": chunk}))
                embeds, mask, _ = model.build_inputs(prompts, tok["input_ids"].to(device),
                                                     tok["attention_mask"].to(device))
                out = model.llm(inputs_embeds=embeds, attention_mask=mask, output_attentions=True)
            require_attentions((out.attentions,))
            share, norm = prompt_attention_share(out.attentions, model.prompt_positions, mask)
            # the query at position j chooses token j + 1 (as generation does): from the prefix's last
            # position to the report's last; valid where that next token is a report token, not padding
            valid = as_numpy(mask)[:, start_q:].astype(bool)  # (B, q)
            share, norm = share[..., start_q - 1 : -1], norm[..., start_q - 1 : -1]
            weight = valid[None, :, None, :] / valid.sum(1)[None, :, None, None]
            frames.append(attention_frame((share * weight).sum(-1)[None], (norm * weight).sum(-1)[None],
                                          sample_offset=start).drop(columns="step"))
    finally:
        model.train(was_training)
    return pd.concat(frames, ignore_index=True)


# -- intervals over studies -------------------------------------------------------------------
def per_study_share(frame: pd.DataFrame, by: str = "layer", value: str = "share") -> pd.DataFrame:
    """Rows (sample, `by`, value): each study's share averaged over heads (and steps or layers)."""
    return frame.groupby(["sample", by], observed=True)[value].mean().reset_index()


def mean_interval(values: ArrayLike, confidence: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, lo, hi, n): a Student t interval for the mean; lo = hi = nan below two values."""
    x = as_numpy(values).ravel()
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(x.mean())
    if n < 2:
        return mean, float("nan"), float("nan"), n
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / np.sqrt(n))
    return mean, mean - half, mean + half, n


def summarise_over_studies(frame: pd.DataFrame, by: str = "layer", value: str = "share",
                           confidence: float = 0.95) -> pd.DataFrame:
    """Per `by` group: mean, lo, hi (t interval over studies of the per-study share) and n studies."""
    per_study = per_study_share(frame, by, value)
    rows = [(key, *mean_interval(g[value], confidence)) for key, g in per_study.groupby(by)]
    out = pd.DataFrame(rows, columns=[by, "mean", "lo", "hi", "n"])
    if "depth" in frame and by == "layer":
        out = out.merge(frame.groupby("layer")["depth"].first().reset_index(), on="layer", how="left")
    return out


def paired_difference(real: pd.DataFrame, control: pd.DataFrame, value: str = "share",
                      confidence: float = 0.95) -> pd.DataFrame:
    """Per layer, real minus control share of the same study (matched on `sample`): mean, lo, hi
    (t interval), n, and the two-sided paired t-test's p (`p_value`; 1 when every difference is 0).
    The t-test matches the interval: p < 1 - confidence exactly when the interval excludes 0."""
    a, b = per_study_share(real, "layer", value), per_study_share(control, "layer", value)
    both = a.merge(b, on=["sample", "layer"], suffixes=("_real", "_control"))
    if both.empty:
        raise ValueError("real and control frames share no (sample, layer): pass the same studies to both")
    rows = []
    for layer, g in both.groupby("layer"):
        diff = (g[f"{value}_real"] - g[f"{value}_control"]).to_numpy()
        mean, lo, hi, n = mean_interval(diff, confidence)
        if n < 2:
            p = float("nan")
        elif np.allclose(diff, diff[0]):  # no spread: the t statistic is 0/0 or infinite
            p = 1.0 if diff[0] == 0 else 0.0
        else:
            p = float(stats.ttest_rel(g[f"{value}_real"], g[f"{value}_control"]).pvalue)
        rows.append((layer, mean, lo, hi, n, p))
    return pd.DataFrame(rows, columns=["layer", "mean", "lo", "hi", "n", "p_value"])


def compare_conditions(frames: Mapping[str, pd.DataFrame], reference: str = "real", control: str = "deranged",
                       value: str = "share", confidence: float = 0.95) -> pd.DataFrame:
    """Tidy rows (layer, condition, mean, lo, hi, n, p_value, test): each condition's share with its
    interval over studies, then `reference - control` per study with the paired t-test."""
    for name in (reference, control):
        if name not in frames:
            raise KeyError(f"no frame named {name!r}; got {sorted(frames)}")
    parts = [summarise_over_studies(f, "layer", value, confidence)[["layer", "mean", "lo", "hi", "n"]]
             .assign(condition=name) for name, f in frames.items()]
    diff = paired_difference(frames[reference], frames[control], value, confidence)
    parts.append(diff.assign(condition=f"{reference} - {control}", test="paired t-test"))
    cols = ["layer", "condition", "mean", "lo", "hi", "n", "p_value", "test"]
    return pd.concat(parts, ignore_index=True).reindex(columns=cols)  # conditions in the order given


# -- plots ------------------------------------------------------------------------------------
def plot_intervals(table: pd.DataFrame, x: str = "layer", group: str | None = "condition",
                   clip: tuple[float, float] = (0.0, 1.0), ax: Any = None, **line: Any) -> Figure:
    """Lines of `mean` with `lo`-`hi` bands (clipped to `clip`: a share lies in [0, 1]), one per
    `group` value; rows without an interval draw no band."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4)) if ax is None else (ax.figure, ax)
    groups = table.groupby(group, sort=False) if group else [("", table)]
    for name, g in groups:
        g = g.sort_values(x)
        (curve,) = ax.plot(g[x], g["mean"], label=str(name) or None, **line)
        lo, hi = g["lo"].clip(*clip), g["hi"].clip(*clip)
        ax.fill_between(g[x], lo, hi, color=curve.get_color(), alpha=0.2, linewidth=0)
    if x in ("layer", "step"):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if group:
        ax.legend()
    return fig


def plot_share(frames: pd.DataFrame | Mapping[str, pd.DataFrame], by: str, normalised: bool = False,
               x: str | None = None, ax: Any = None, **line: Any) -> Figure:
    """Prompt attention share per `by` group ("layer" or "step"), one line per named frame; the band
    is the 95% t interval over studies, clipped to [0, 1] (normalised: to [0, inf))."""
    value = "normalised_share" if normalised else "share"
    frames = {"": frames} if isinstance(frames, pd.DataFrame) else frames
    table = pd.concat([summarise_over_studies(f, by, value).assign(name=name) for name, f in frames.items()])
    xs = x if x in table else by
    fig = plot_intervals(table, xs, "name" if any(frames) else None,
                         (0.0, np.inf) if normalised else (0.0, 1.0), ax, **line)
    ax = fig.axes[0] if ax is None else ax
    if normalised:
        ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    ax.set_xlabel({"depth": "relative depth (layer / last layer)", "step": "generation step"}.get(xs, xs))
    ax.set_ylabel(("normalised " if normalised else "") + "attention share on visual prompts")
    return fig


def plot_share_by_layer(frames: pd.DataFrame | Mapping[str, pd.DataFrame], normalised: bool = False,
                        x: str = "depth", ax: Any = None) -> Figure:
    """Prompt attention share by layer (x: "depth" or "layer"), band = 95% interval over studies."""
    return plot_share(frames, "layer", normalised, x, ax, marker="o")


def plot_share_over_steps(frames: pd.DataFrame | Mapping[str, pd.DataFrame], normalised: bool = False,
                          ax: Any = None) -> Figure:
    """Prompt attention share over generation steps (per study: mean over layers and heads; band: 95%
    interval over the studies still generating at that step)."""
    return plot_share(frames, "step", normalised, ax=ax)
