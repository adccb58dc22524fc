"""ReportGenerator: visual encoder -> mapper -> LoRA LLM, joined in one place.

The LLM reads `[K soft visual prompts][prompt text][report][eos]` through `inputs_embeds`;
the loss covers the report tokens and eos only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from .config import ModelConfig, RunConfig
from .encoder import batchnorm_eval, build_encoder
from .labels import is_positive
from .llm import add_lora, load_llm
from .mapper import Mapper

IGNORE_INDEX = -100


class FindingHead(nn.Module):
    """Auxiliary multi-label head on the pooled soft prompts: this project's ablation, not the paper's.

    With `model.aux_loss_weight > 0` the mapper also learns to predict the 14 findings from the
    prompts (0, the default, is the paper's model). The normalisation (BatchNorm without affine
    parameters) matters: the image-dependent part of the prompts is a few percent of their norm,
    and an unnormalised head cannot see it.
    """

    def __init__(self, dim: int, num_labels: int, norm: str = "batch"):
        super().__init__()
        if norm not in ("batch", "layer"):
            raise ValueError(f"model.aux_norm must be 'batch' or 'layer', got {norm!r}")
        self.norm = (nn.BatchNorm1d(dim, affine=False) if norm == "batch"
                     else nn.LayerNorm(dim, elementwise_affine=False))
        self.linear = nn.Linear(dim, num_labels)

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(prompts.float().mean(dim=1)))

    @torch.no_grad()
    def init_prior(self, targets: torch.Tensor, eps: float = 1e-3) -> None:
        """Start each label's bias at the log-odds of its training prevalence."""
        # From a zero bias Adam moves it by about the learning rate per step: a label at 5%
        # prevalence needs thousands of steps before the head learns more than the base rate
        # (aux F1 0.35 vs 0.61 after 80 steps, measured).
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


@dataclass
class Generation:
    """What `ReportGenerator.generate` returns, whatever the options. `token_ids[i]`: report i's ids
    up to and including eos, `logprobs[i]` theirs; `attentions`: per step (0 = the prefill over the
    prefix), per layer, (B, H, q, L) weights, with `output_attentions` only."""

    texts: list[str]
    token_ids: list[list[int]]
    logprobs: list[list[float]]
    attentions: tuple[tuple[torch.Tensor, ...], ...] | None = None

    def __len__(self) -> int:
        return len(self.texts)


def finding_targets(labels: torch.Tensor) -> torch.Tensor:
    """CheXpert values -> binary targets (positive or uncertain = 1), the evaluation convention."""
    return is_positive(labels).float()


def require_attentions(attentions: Any) -> None:
    """Raise if generation returned no attention weights (non-eager attention)."""
    # transformers 5.x with SDPA returns one *empty* tuple per step (Llama warns, GPT-2 does not)
    if not attentions or any(not layers or any(w is None for w in layers) for layers in attentions):
        raise RuntimeError("the language model returned no attention weights: only eager attention "
                           "returns them (SDPA and flash attention silently return nothing). Build the model "
                           "with `model.llm.attn_implementation: eager` in the run's YAML for attention analyses.")


def check_decoding(num_beams: int, max_new_tokens: int, do_sample: bool, temperature: float) -> None:
    """Raise a one-line error for decoding settings `generate` cannot honour."""
    if num_beams < 1:
        raise ValueError(f"num_beams must be at least 1 (1 = greedy), got {num_beams}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature <= 0:
        raise ValueError(f"generation.temperature must be > 0, got {temperature}")
    if temperature != 1.0 and not do_sample:
        raise ValueError(f"generation.temperature={temperature} has no effect without sampling: "
                         "set generation.do_sample: true, or leave temperature at 1.0")


def split_state(state: dict[str, torch.Tensor], prefixes: tuple[str, ...], source: str) -> dict[str, dict]:
    """{"mapper.w": t, "aux_head.b": u} -> {"mapper": {"w": t}, "aux_head": {"b": u}}; unknown keys raise."""
    parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in prefixes}
    for key, value in state.items():
        part, _, rest = key.partition(".")
        if part not in parts or not rest:
            raise ValueError(f"{source}: unexpected tensor {key!r}; expected keys under {', '.join(prefixes)}")
        parts[part][rest] = value
    return parts


def check_same_model(trained: ModelConfig, configured: ModelConfig, source: str) -> None:
    """Raise a clear error if `configured` builds another architecture than a run `trained` with."""
    keys = ("encoder.name", "encoder.image_size", "llm.name", "mapper.num_prompts")
    diff = {f"model.{k}": (attrgetter(k)(trained), attrgetter(k)(configured)) for k in keys}
    diff = {k: ab for k, ab in diff.items() if ab[0] != ab[1]}
    if diff:
        told = "; ".join(f"{k}: trained with {a!r}, config says {b!r}" for k, (a, b) in diff.items())
        fix = ", ".join(f"{k}={a}" for k, (a, _) in diff.items())
        raise ValueError(f"{source} does not describe the saved model ({told}). Use the run's own "
                         f"config, or set {fix}; to change the model, train a new run.")


class ReportGenerator(nn.Module):
    """Encoder + mapper + LoRA LLM (+ this project's optional auxiliary finding head)."""

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
        # ablation of this project (not in the paper): see FindingHead
        self.aux_head = (FindingHead(hidden, len(cfg.aux_labels), cfg.aux_norm)
                         if cfg.aux_loss_weight > 0 else None)
        ids = self.tokenizer(cfg.llm.prompt, add_special_tokens=False)["input_ids"]
        self.register_buffer("prompt_ids", torch.tensor(ids, dtype=torch.long), persistent=False)
        bos = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
        self.register_buffer("bos_ids", torch.tensor([bos] if cfg.llm.bos else [], dtype=torch.long), persistent=False)
        # the encoder's weights are the pretrained ones until it is first unfrozen (or loaded)
        self.stores_encoder = not cfg.encoder.pretrained
        self.set_encoder_trainable(False)

    # -- parts ---------------------------------------------------------------------------
    @property
    def num_prefix_tokens(self) -> int:
        """BOS (optional) + visual prompts + prompt text: the positions that never carry a loss."""
        return self.bos_ids.numel() + self.cfg.mapper.num_prompts + self.prompt_ids.numel()

    @property
    def prompt_positions(self) -> slice:
        """Where the K visual prompts sit in the LLM's input."""
        return slice(self.bos_ids.numel(), self.bos_ids.numel() + self.cfg.mapper.num_prompts)

    def set_encoder_trainable(self, trainable: bool) -> None:
        """Freeze (stage 1 / `frozen`) or unfreeze (stage 2 / `finetune`) the visual encoder."""
        for p in self.encoder.parameters():
            p.requires_grad_(trainable)
        # once trained, the encoder's weights are this run's and must be saved with it
        self.stores_encoder = self.stores_encoder or trainable
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
        size = self.cfg.encoder.image_size
        if tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"images are {images.shape[-2]}x{images.shape[-1]} px but this model was built "
                             f"for model.encoder.image_size={size}: load the images at {size} px (the "
                             "mapper's positions are learned for that grid: a trained model cannot change it)")
        if self.cfg.image_blind:
            images = torch.zeros_like(images)  # the control sees the same constant for every study
        return self.encoder(images)

    def visual_prompts(self, images: torch.Tensor | None = None,
                       features: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K, d_llm) soft visual prompts from images or from cached encoder features."""
        if features is None:
            if images is None:
                raise ValueError("pass images or cached encoder features")
            features = self.encode_images(images)
        return self.mapper(features)

    def tokenize_reports(self, reports: list[str]) -> dict[str, torch.Tensor]:
        """Report strings -> right-padded ids ending in eos, at most max_report_tokens long. A longer
        report is cut with *no* eos (the model must not learn to stop mid-report), marked in `truncated`."""
        tok, limit = self.tokenizer, self.cfg.llm.max_report_tokens
        rows, cut = [], []
        for ids in tok(list(reports), add_special_tokens=False)["input_ids"]:
            cut.append(len(ids) + 1 > limit)  # + 1: the eos needs a place too
            rows.append(ids[:limit] if cut[-1] else ids + [tok.eos_token_id])
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows], dtype=torch.long)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "truncated": torch.tensor(cut, dtype=torch.bool)}

    def prefix_embeds(self, prompts: torch.Tensor) -> torch.Tensor:
        """(B, K, d) visual prompts -> (B, [1 +] K + T, d) LLM input: [BOS], the prompts, the prompt text."""
        embed = self.llm.get_input_embeddings()

        def fixed(ids: torch.Tensor) -> torch.Tensor:
            return embed(ids).unsqueeze(0).expand(prompts.shape[0], -1, -1).to(prompts.dtype)

        return torch.cat([fixed(self.bos_ids), prompts, fixed(self.prompt_ids)], dim=1)

    def build_inputs(self, prompts: torch.Tensor, report_input_ids: torch.Tensor,
                     report_attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Join prefix and report: (inputs_embeds, attention_mask, labels)."""
        prefix = self.prefix_embeds(prompts)
        report = self.llm.get_input_embeddings()(report_input_ids).to(prefix.dtype)
        ones = report_attention_mask.new_ones((prompts.shape[0], prefix.shape[1]))
        attention = torch.cat([ones, report_attention_mask], dim=1)
        report_labels = report_input_ids.masked_fill(report_attention_mask == 0, IGNORE_INDEX)
        labels = torch.cat([torch.full_like(ones, IGNORE_INDEX), report_labels], dim=1)
        return torch.cat([prefix, report], dim=1), attention, labels

    # -- training ------------------------------------------------------------------------
    def forward(self, report_input_ids: torch.Tensor, report_attention_mask: torch.Tensor,
                images: torch.Tensor | None = None, features: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, return_logits: bool = False) -> GeneratorOutput:
        """Teacher-forced loss on the report (+eos), plus the weighted auxiliary finding loss."""
        prompts = self.visual_prompts(images, features)
        embeds, attention, lm_labels = self.build_inputs(prompts, report_input_ids, report_attention_mask)
        logits = self.llm(inputs_embeds=embeds, attention_mask=attention).logits
        # next-token prediction: position t predicts token t+1
        lm_loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                  lm_labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
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
    def generate(self, images: torch.Tensor | None = None, features: torch.Tensor | None = None,
                 max_new_tokens: int = 100, num_beams: int = 1, do_sample: bool = False,
                 temperature: float = 1.0, output_attentions: bool = False,
                 **decoding: Any) -> Generation:
        """One report per image (or row of cached features); takes `**asdict(cfg.generation)`, other
        keywords go to Hugging Face `generate`. `output_attentions` needs eager attention."""
        check_decoding(num_beams, max_new_tokens, do_sample, temperature)
        embeds = self.prefix_embeds(self.visual_prompts(images, features))
        tok = self.tokenizer
        if do_sample:
            decoding["temperature"] = temperature  # passed only when sampling: HF warns otherwise
        out = self.llm.generate(
            inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device),
            max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=do_sample,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, return_dict_in_generate=True,
            output_scores=True, output_attentions=output_attentions, **decoding)
        if output_attentions:
            require_attentions(out.attentions)
        seqs = out.sequences  # with inputs_embeds only, generate returns the new tokens alone
        texts = [t.strip() for t in tok.batch_decode(seqs, skip_special_tokens=True)]
        steps = self.llm.compute_transition_scores(seqs, out.scores, getattr(out, "beam_indices", None),
                                                   normalize_logits=True)
        token_ids, logprobs = [], []
        for row_ids, row_lp in zip(seqs.tolist(), steps.float().tolist(), strict=True):
            # a row ends with its eos (kept) or, when pad is another token, before its first pad
            n = len(row_lp)
            for j, t in enumerate(row_ids[:n]):
                if t in (tok.eos_token_id, tok.pad_token_id):
                    n = j + (t == tok.eos_token_id)
                    break
            token_ids.append(row_ids[:n])
            logprobs.append([lp if math.isfinite(lp) else float("-inf") for lp in row_lp[:n]])
        return Generation(texts, token_ids, logprobs, out.attentions if output_attentions else None)

    # -- persistence ---------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, run_config: RunConfig | None = None) -> None:
        """Write model_config.yaml, mapper(+head).safetensors, encoder.safetensors if trained, adapter/."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "model_config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(self.cfg), sort_keys=False))
        if run_config is not None:
            run_config.to_yaml(path / "config.yaml")
        parts = {"mapper": self.mapper, "aux_head": self.aux_head}
        heads = {f"{n}.{k}": v.contiguous() for n, m in parts.items() if m is not None
                 for k, v in m.state_dict().items()}
        save_file(heads, str(path / "mapper.safetensors"))
        # a pretrained encoder that was never trained is rebuilt from its weights, not stored
        if self.stores_encoder:
            enc = {k: v.contiguous() for k, v in self.encoder.state_dict().items()}
            save_file(enc, str(path / "encoder.safetensors"))
        self.llm.save_pretrained(str(path / "adapter"))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ReportGenerator:
        """Rebuild a saved generator (no pickle: YAML + safetensors + peft adapter)."""
        from peft import load_peft_weights, set_peft_model_state_dict

        path = Path(path)
        cfg_file, heads_file = path / "model_config.yaml", path / "mapper.safetensors"
        enc_file = path / "encoder.safetensors"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{cfg_file} not found: {path} is not a saved ReportGenerator")
        saved = yaml.safe_load(cfg_file.read_text())
        # saved before `llm.bos` existed: those models were trained without a BOS token
        saved.get("llm", {}).setdefault("bos", False)
        cfg = RunConfig.from_dict({"model": saved}, source=str(cfg_file)).model
        has_encoder = enc_file.is_file()
        # with a stored encoder its weights come from the file: build it without a download
        build_cfg = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, pretrained=False))
        model = cls(build_cfg if has_encoder else cfg)
        model.cfg = cfg
        parts = split_state(load_file(str(heads_file)), ("mapper", "aux_head"), str(heads_file))
        model.load_part("mapper", parts["mapper"], heads_file)
        if model.aux_head is not None:
            model.load_part("aux_head", parts["aux_head"], heads_file)
        if has_encoder:
            model.load_part("encoder", load_file(str(enc_file)), enc_file)
            model.stores_encoder = True
        result = set_peft_model_state_dict(model.llm, load_peft_weights(str(path / "adapter")))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{path / 'adapter'} does not match the configured LoRA: {result.unexpected_keys[:5]}")
        return model

    def load_part(self, name: str, state: dict[str, torch.Tensor], source: str | Path) -> None:
        """Strictly load one part's (encoder, mapper, aux_head) tensors; a mismatch names the cause."""
        try:
            getattr(self, name).load_state_dict(state, strict=True)
        except RuntimeError as exc:
            enc = self.cfg.encoder
            raise ValueError(f"{source}: the saved {name} does not fit the model built from the config (encoder "
                             f"{enc.name!r} at {enc.image_size} px, LLM {self.cfg.llm.name!r}): it was trained "
                             "with another encoder, LLM or mapper size. Load the run with its own config.yaml, "
                             f"or train a new run for this config. ({str(exc).splitlines()[0]})") from exc

    def trainable_parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per part (encoder, mapper, lora, aux_head)."""
        parts = {"encoder": self.encoder, "mapper": self.mapper, "lora": self.llm, "aux_head": self.aux_head}
        return {k: sum(p.numel() for p in m.parameters() if p.requires_grad)
                for k, m in parts.items() if m is not None}
