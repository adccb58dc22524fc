"""Attention to the soft visual prompts: how much of the LLM's attention reads the image.

Prompt attention share: for one query token, the attention mass on the K soft visual prompts
(positions [0, K)). Normalised share: that share divided by the share uniform attention over the
positions the query may attend to would give, (unmasked positions in [0, K)) / (unmasked
positions up to and including the query). 1 = the prompts get what their length alone predicts;
> 1 = the LLM looks at the image more than at an average token.

The weights come from `ReportGenerator.generate(output_attentions=True)` (eager attention only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from rrglib.devices import autocast

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from rrglib.model import ReportGenerator

ArrayLike = np.ndarray | torch.Tensor


def as_numpy(x: ArrayLike) -> np.ndarray:
    """A float numpy copy of a tensor or array."""
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=float)


def prompt_attention_share(weights: Sequence[ArrayLike], num_prompts: int,
                           attention_mask: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer attention (B, H, q, L) -> (share, normalised share), each (layers, B, H, q). Queries
    are the last q of L positions (KV cache); `attention_mask` (B, >= L) marks padding with 0."""
    shares, norms = [], []
    for w in weights:
        w = as_numpy(w)
        b, _, q, length = w.shape
        mask = np.ones((b, length)) if attention_mask is None else as_numpy(attention_mask)[:, :length]
        # query j sits at position length - q + j and (causal) sees positions 0 .. that position
        cum = np.cumsum(mask, axis=1)
        seen = cum[:, length - q :]  # (B, q) unmasked positions visible to each query
        prompts_visible = cum[:, np.minimum(np.arange(length - q, length), num_prompts - 1)]
        with np.errstate(divide="ignore", invalid="ignore"):
            expected = np.where(seen > 0, prompts_visible / seen, np.nan)  # (B, q)
            share = w[..., :num_prompts].sum(-1)  # (B, H, q)
            norms.append(share / expected[:, None, :])
        shares.append(share)
    return np.stack(shares), np.stack(norms)


def generation_prompt_share(step_attentions: Sequence[Sequence[ArrayLike]], num_prompts: int,
                            attention_mask: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`generate(output_attentions=True).attentions` -> (share, normalised), each (steps, layers, B, H).
    Step s chooses generated token s; its query is the last position (step 0: the prefill's last row)."""
    steps = [prompt_attention_share([as_numpy(w)[:, :, -1:, :] for w in layers], num_prompts, attention_mask)
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
            share, norm = generation_prompt_share(out.attentions, model.cfg.mapper.num_prompts)
            # step s chose token s; a sample's ids stop at its eos, later steps are padding
            lengths = np.array([len(ids) for ids in out.token_ids])
            valid = np.arange(share.shape[0])[:, None] < lengths[None, :]  # (steps, B)
            frames.append(attention_frame(share, norm, valid, sample_offset=start))
    finally:
        model.train(was_training)
    frame = pd.concat(frames, ignore_index=True)
    return frame.sort_values(["sample", "step", "layer", "head"], kind="stable", ignore_index=True)


def summarise_prompt_attention(frame: pd.DataFrame, by: Sequence[str] = ("layer",),
                               value: str = "share") -> pd.DataFrame:
    """Mean over samples and steps per head, then mean/std/min/max over heads for each `by` group
    (by layer: over that layer's heads; by step: over all heads of all layers)."""
    by = list(by)
    units = list(dict.fromkeys(by + ["layer", "head"]))
    per_head = frame.groupby(units, observed=True)[value].mean().reset_index()
    out = per_head.groupby(by)[value].agg(["mean", "std", "min", "max"])
    out["n_samples"] = frame.groupby(by)["sample"].nunique()
    out = out.reset_index()
    if "depth" in frame and "layer" in by:
        out = out.merge(frame.groupby("layer")["depth"].first().reset_index(), on="layer", how="left")
    return out


def plot_share(frames: pd.DataFrame | Mapping[str, pd.DataFrame], by: str, normalised: bool = False,
               x: str | None = None, band: str = "std", ax: Any = None, **line: Any) -> Figure:
    """Prompt attention share per `by` group ("layer" or "step"), one line per named frame; the band
    is the spread over heads (`band` "minmax" or "std")."""
    import matplotlib.pyplot as plt

    value = "normalised_share" if normalised else "share"
    frames = {"": frames} if isinstance(frames, pd.DataFrame) else frames
    fig, ax = plt.subplots(figsize=(6, 4)) if ax is None else (ax.figure, ax)
    for name, frame in frames.items():
        s = summarise_prompt_attention(frame, (by,), value)
        xs = s[x] if x in s else s[by]
        (curve,) = ax.plot(xs, s["mean"], label=name or None, **line)
        lo, hi = (s["min"], s["max"]) if band == "minmax" else (s["mean"] - s["std"], s["mean"] + s["std"])
        ax.fill_between(xs, lo, hi, color=curve.get_color(), alpha=0.2, linewidth=0)
    if normalised:
        ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    ax.set_xlabel({"depth": "relative depth (layer / last layer)", "step": "generation step"}.get(x or by, by))
    ax.set_ylabel(("normalised " if normalised else "") + "attention share on visual prompts")
    if any(frames):
        ax.legend()
    return fig


def plot_share_by_layer(frames: pd.DataFrame | Mapping[str, pd.DataFrame], normalised: bool = False,
                        x: str = "depth", band: str = "minmax", ax: Any = None) -> Figure:
    """Prompt attention share by layer (x: "depth" or "layer"), band = spread over heads."""
    return plot_share(frames, "layer", normalised, x, band, ax, marker="o")


def plot_share_over_steps(frames: pd.DataFrame | Mapping[str, pd.DataFrame], normalised: bool = False,
                          ax: Any = None) -> Figure:
    """Prompt attention share over generation steps (mean over layers and heads, band: std over heads)."""
    return plot_share(frames, "step", normalised, ax=ax)
