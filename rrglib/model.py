"""ReportGenerator: visual encoder -> mapper -> LoRA LLM, joined in one place.

The LLM reads `[K soft visual prompts][prompt text][report][eos]` through `inputs_embeds`;
the loss covers the report tokens and eos only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from .labels import is_positive
from .config import ModelConfig, RunConfig, _build
from .encoder import batchnorm_eval, build_encoder
from .llm import add_lora, load_llm
from .mapper import Mapper

IGNORE_INDEX = -100


class FindingHead(nn.Module):
    """Auxiliary multi-label head on the pooled soft prompts.

    The normalisation (BatchNorm without affine parameters) matters: the image-dependent part of
    the prompts is a few percent of their norm, and an unnormalised head cannot see it.
    """

    def __init__(self, dim: int, num_labels: int, norm: str = "batch"):
        super().__init__()
        if norm not in ("batch", "layer"):
            raise ValueError(f"model.aux_norm must be 'batch' or 'layer', got {norm!r}")
        self.norm = nn.BatchNorm1d(dim, affine=False) if norm == "batch" else nn.LayerNorm(dim, elementwise_affine=False)
        self.linear = nn.Linear(dim, num_labels)

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(prompts.float().mean(dim=1)))

    @torch.no_grad()
    def init_prior(self, targets: torch.Tensor, eps: float = 1e-3) -> None:
        """Start each label's bias at the log-odds of its training prevalence.

        From a zero bias, Adam moves it by about the learning rate per step, so a label at 5%
        prevalence needs thousands of steps before the head can learn anything but the base
        rate; short runs never get there (aux F1 0.35 vs 0.61 after 80 steps, measured).
        """
        prevalence = targets.float().mean(dim=0).clamp(eps, 1 - eps)
        self.linear.bias.copy_(torch.log(prevalence / (1 - prevalence)))


@dataclass
class GeneratorOutput:
    loss: torch.Tensor
    lm_loss: torch.Tensor
    aux_loss: torch.Tensor | None = None
    aux_logits: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    prompts: torch.Tensor | None = None


def finding_targets(labels: torch.Tensor) -> torch.Tensor:
    """CheXpert values -> binary targets: positive or uncertain = 1; negative or not mentioned = 0.

    The tensor form of `rrglib.metrics.clinical.binarize(..., uncertain_positive=True)`, the
    evaluation convention (a test keeps the two equal).
    """
    return is_positive(labels).float()


class ReportGenerator(nn.Module):
    """Encoder + mapper + LoRA LLM (+ optional auxiliary finding head)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = build_encoder(cfg.encoder)
        base, self.tokenizer = load_llm(cfg.llm)
        self.llm = add_lora(base, cfg.llm)
        hidden = base.config.hidden_size
        self.mapper = Mapper(self.encoder.out_channels, hidden, cfg.mapper)
        if self.mapper.prompt_norm is not None:
            # standardised prompts start at the scale of the LLM's own token embeddings
            emb = base.get_input_embeddings().weight.detach().float()
            with torch.no_grad():
                self.mapper.prompt_norm.weight.fill_(float(emb.pow(2).mean().sqrt()))
        self.aux_head = FindingHead(hidden, len(cfg.aux_labels), cfg.aux_norm) if cfg.aux_loss_weight > 0 else None
        ids = self.tokenizer(cfg.llm.prompt, add_special_tokens=False)["input_ids"]
        self.register_buffer("prompt_ids", torch.tensor(ids, dtype=torch.long), persistent=False)
        self.encoder_trained = False  # becomes True once the encoder has been unfrozen
        self.set_encoder_trainable(False)

    # -- parts ---------------------------------------------------------------------------
    @property
    def num_prefix_tokens(self) -> int:
        """Visual prompts + prompt text: the positions that never carry a loss."""
        return self.cfg.mapper.num_prompts + self.prompt_ids.numel()

    def set_encoder_trainable(self, trainable: bool) -> None:
        """Freeze (stage 1 / `frozen`) or unfreeze (stage 2 / `finetune`) the visual encoder."""
        for p in self.encoder.parameters():
            p.requires_grad_(trainable)
        self.encoder_trained = self.encoder_trained or trainable
        self.train(self.training)

    @property
    def encoder_trainable(self) -> bool:
        return any(p.requires_grad for p in self.encoder.parameters())

    def train(self, mode: bool = True) -> ReportGenerator:
        super().train(mode)
        if not self.encoder_trainable:
            self.encoder.eval()  # a frozen encoder also keeps dropout/BN in inference mode
        elif self.cfg.encoder.freeze_bn_stats:
            batchnorm_eval(self.encoder)
        return self

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W), already normalised -> encoder tokens (B, N, C)."""
        if self.cfg.image_blind:
            images = torch.zeros_like(images)  # the control sees the same constant for every study
        return self.encoder(images)

    def visual_prompts(self, images: torch.Tensor | None = None, features: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K, d_llm) soft visual prompts from images or from cached encoder features."""
        if features is None:
            if images is None:
                raise ValueError("pass images or cached encoder features")
            features = self.encode_images(images)
        return self.mapper(features)

    def tokenize_reports(self, reports: list[str]) -> dict[str, torch.Tensor]:
        """Report strings -> right-padded ids ending in eos (truncated to max_report_tokens)."""
        tok = self.tokenizer
        limit = self.cfg.llm.max_report_tokens - 1
        rows = [tok(r, add_special_tokens=False)["input_ids"][:limit] + [tok.eos_token_id] for r in reports]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def _prefix_embeds(self, prompts: torch.Tensor) -> torch.Tensor:
        text = self.llm.get_input_embeddings()(self.prompt_ids)
        text = text.unsqueeze(0).expand(prompts.shape[0], -1, -1).to(prompts.dtype)
        return torch.cat([prompts, text], dim=1)

    def build_inputs(self, prompts: torch.Tensor, report_input_ids: torch.Tensor,
                     report_attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Join prefix and report: (inputs_embeds, attention_mask, labels)."""
        b = prompts.shape[0]
        prefix = self._prefix_embeds(prompts)
        report = self.llm.get_input_embeddings()(report_input_ids).to(prefix.dtype)
        embeds = torch.cat([prefix, report], dim=1)
        ones = report_attention_mask.new_ones((b, prefix.shape[1]))
        attention = torch.cat([ones, report_attention_mask], dim=1)
        ignore = torch.full_like(ones, IGNORE_INDEX)
        labels = torch.cat([ignore, report_input_ids.masked_fill(report_attention_mask == 0, IGNORE_INDEX)], 1)
        return embeds, attention, labels

    # -- training ------------------------------------------------------------------------
    def forward(
        self,
        report_input_ids: torch.Tensor,
        report_attention_mask: torch.Tensor,
        images: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_logits: bool = False,
    ) -> GeneratorOutput:
        """Teacher-forced loss on the report (+eos), plus the weighted auxiliary finding loss."""
        prompts = self.visual_prompts(images, features)
        embeds, attention, lm_labels = self.build_inputs(prompts, report_input_ids, report_attention_mask)
        out = self.llm(inputs_embeds=embeds, attention_mask=attention)
        logits = out.logits
        # next-token prediction: position t predicts token t+1
        lm_loss = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            lm_labels[:, 1:].reshape(-1),
            ignore_index=IGNORE_INDEX,
        )
        loss, aux_loss, aux_logits = lm_loss, None, None
        if self.aux_head is not None:
            aux_logits = self.aux_head(prompts)
            if labels is not None:
                aux_loss = F.binary_cross_entropy_with_logits(aux_logits, finding_targets(labels))
                loss = lm_loss + self.cfg.aux_loss_weight * aux_loss
        return GeneratorOutput(loss, lm_loss, aux_loss, aux_logits,
                               logits if return_logits else None, prompts)

    # -- inference -----------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        images: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        max_new_tokens: int = 100,
        num_beams: int = 1,
        do_sample: bool = False,
        return_scores: bool = False,
        return_token_ids: bool = False,
        **decoding,
    ) -> list[str] | tuple:
        """Generate one report per image.

        With `return_scores`, also each generated token's log-prob (up to and including eos);
        with `return_token_ids` as well, the generated token ids aligned with those log-probs.
        """
        prompts = self.visual_prompts(images, features)
        embeds = self._prefix_embeds(prompts)
        attention = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        tok = self.tokenizer
        out = self.llm.generate(
            inputs_embeds=embeds,
            attention_mask=attention,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=do_sample,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            return_dict_in_generate=True,
            output_scores=return_scores,
            **decoding,
        )
        seqs = out.sequences  # with inputs_embeds only, generate returns the new tokens alone
        texts = [t.strip() for t in tok.batch_decode(seqs, skip_special_tokens=True)]
        if not return_scores:
            return texts
        steps = self.llm.compute_transition_scores(seqs, out.scores, getattr(out, "beam_indices", None),
                                                   normalize_logits=True)
        logprobs, token_ids = [], []
        for row_ids, row_lp in zip(seqs.tolist(), steps.float().tolist(), strict=True):
            keep, ids = [], []
            for tid, lp in zip(row_ids, row_lp, strict=False):
                if tid == tok.pad_token_id and tid != tok.eos_token_id:
                    break
                keep.append(lp if math.isfinite(lp) else float("-inf"))
                ids.append(tid)
                if tid == tok.eos_token_id:
                    break
            logprobs.append(keep)
            token_ids.append(ids)
        return (texts, logprobs, token_ids) if return_token_ids else (texts, logprobs)

    # -- persistence ---------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, run_config: RunConfig | None = None) -> None:
        """Write config.yaml, mapper(+head).safetensors, encoder.safetensors if trained, adapter/."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "model_config.yaml").write_text(yaml.safe_dump(_asdict(self.cfg), sort_keys=False))
        if run_config is not None:
            run_config.to_yaml(path / "config.yaml")
        heads = {f"mapper.{k}": v for k, v in self.mapper.state_dict().items()}
        if self.aux_head is not None:
            heads.update({f"aux_head.{k}": v for k, v in self.aux_head.state_dict().items()})
        save_file({k: v.contiguous() for k, v in heads.items()}, str(path / "mapper.safetensors"))
        # a pretrained encoder that was never trained is rebuilt from its weights, not stored
        if self.encoder_trained or not self.cfg.encoder.pretrained:
            enc = {k: v.contiguous() for k, v in self.encoder.state_dict().items()}
            save_file(enc, str(path / "encoder.safetensors"))
        self.llm.save_pretrained(str(path / "adapter"))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ReportGenerator:
        """Rebuild a saved generator (no pickle: YAML + safetensors + peft adapter)."""
        from peft import load_peft_weights, set_peft_model_state_dict

        path = Path(path)
        cfg_file = path / "model_config.yaml"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{cfg_file} not found: {path} is not a saved ReportGenerator")
        cfg = _build(ModelConfig, yaml.safe_load(cfg_file.read_text()), str(cfg_file), "")
        has_encoder = (path / "encoder.safetensors").is_file()
        build_cfg = _build(ModelConfig, _asdict(cfg), str(cfg_file), "")
        if has_encoder:
            build_cfg.encoder.pretrained = False  # weights come from the file; no download needed
        model = cls(build_cfg)
        model.cfg = cfg
        heads = load_file(str(path / "mapper.safetensors"))
        model.mapper.load_state_dict({k[7:]: v for k, v in heads.items() if k.startswith("mapper.")})
        if model.aux_head is not None:
            model.aux_head.load_state_dict({k[9:]: v for k, v in heads.items() if k.startswith("aux_head.")})
        if has_encoder:
            model.encoder.load_state_dict(load_file(str(path / "encoder.safetensors")))
            model.encoder_trained = True
        result = set_peft_model_state_dict(model.llm, load_peft_weights(str(path / "adapter")))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{path / 'adapter'} does not match the configured LoRA: {result.unexpected_keys[:5]}")
        return model

    def trainable_parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per part (encoder, mapper, lora, aux_head)."""
        parts = {"encoder": self.encoder, "mapper": self.mapper, "lora": self.llm}
        if self.aux_head is not None:
            parts["aux_head"] = self.aux_head
        return {k: sum(p.numel() for p in m.parameters() if p.requires_grad) for k, m in parts.items()}


def _asdict(cfg: ModelConfig) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)
