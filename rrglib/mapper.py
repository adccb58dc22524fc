"""The mapping network: encoder tokens -> K soft visual prompts in the LLM's embedding space."""

from __future__ import annotations

import torch
from torch import nn

from .config import MapperConfig


class Mapper(nn.Module):
    """K learned queries cross-attend to the encoder tokens through one transformer decoder layer."""

    def __init__(self, in_dim: int, out_dim: int, cfg: MapperConfig | None = None):
        super().__init__()
        cfg = cfg or MapperConfig()
        self.cfg = cfg
        self.input_proj = nn.Linear(in_dim, cfg.d_model)
        # CNN features share a large image-independent component; normalising each token keeps
        # the image-specific part from vanishing in the cross-attention average
        self.input_norm = nn.LayerNorm(cfg.d_model)
        # learned positions: the encoder grid is fixed for a given image size
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.max_tokens, cfg.d_model) * 0.02)
        self.queries = nn.Parameter(torch.randn(1, cfg.num_prompts, cfg.d_model) * 0.02)
        self.decoder = nn.TransformerDecoderLayer(
            d_model=cfg.d_model,
            nhead=cfg.num_heads,
            dim_feedforward=cfg.dim_feedforward,
            dropout=cfg.dropout,
            batch_first=True,
            norm_first=True,  # pre-norm trains stably from a random start at high lr
        )
        self.norm = nn.LayerNorm(cfg.d_model)
        self.output_proj = nn.Linear(cfg.d_model, out_dim)
        if cfg.prompt_norm not in ("none", "batch"):
            raise ValueError(f"model.mapper.prompt_norm must be 'none' or 'batch', got {cfg.prompt_norm!r}")
        # one statistic per (prompt, dimension): per-prompt constants are removed as well
        self.prompt_norm = nn.BatchNorm1d(cfg.num_prompts * out_dim) if cfg.prompt_norm == "batch" else None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) encoder tokens -> (B, K, out_dim) soft visual prompts."""
        b, n, _ = tokens.shape
        if n > self.pos_embed.shape[1]:
            raise ValueError(
                f"encoder produced {n} tokens but the mapper's positional embedding covers "
                f"{self.pos_embed.shape[1]} (model.mapper.max_tokens): feed images at the "
                "model.encoder.image_size the mapper was built for; for a new run, a larger image "
                f"size needs model.mapper.max_tokens >= {n}"
            )
        memory = self.input_norm(self.input_proj(tokens)) + self.pos_embed[:, :n]
        queries = self.queries.expand(b, -1, -1)
        prompts = self.output_proj(self.norm(self.decoder(queries, memory)))
        if self.prompt_norm is not None:
            prompts = self.prompt_norm(prompts.flatten(1)).view_as(prompts)
        return prompts
