"""The language model: load a causal LM and its tokenizer, then attach LoRA.

`cfg.name` is a name of the offline registry `rrglib.assets.LLMS` (tiny test models, SmolLM2),
a Hugging Face hub id or a local directory; all pass through `load_llm`.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .assets import LLMS, Pair
from .config import LLMConfig

# LoRA targets per architecture (the paper adapts the attention projections).
LORA_TARGETS: dict[str, list[str]] = {"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"],
                                      "mistral": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"],
                                      "gpt_neox": ["query_key_value"]}


def load_llm(cfg: LLMConfig) -> Pair:
    """Load the causal LM and its tokenizer named by `cfg.name` (registry, hub id or local dir)."""
    if cfg.name in LLMS:
        model, tok = LLMS[cfg.name](cfg.attn_implementation)
    else:
        try:
            tok = AutoTokenizer.from_pretrained(cfg.name)
            model = AutoModelForCausalLM.from_pretrained(
                cfg.name, attn_implementation=cfg.attn_implementation, dtype=torch.float32)
        except OSError as exc:
            raise OSError(
                f"could not load language model {cfg.name!r}: it is not a registry name "
                f"({', '.join(sorted(LLMS))}), not a local directory, and the Hugging Face Hub "
                "did not provide it (offline?). On a machine with access run "
                f"`huggingface-cli download {cfg.name} --local-dir DIR` and set model.llm.name: DIR."
            ) from exc
    # GPT-2 and some GGUF checkpoints ship without a pad token; batching and generation need one
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is not None:
            config.eos_token_id, config.pad_token_id = tok.eos_token_id, tok.pad_token_id
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model, tok


def lora_targets(model: PreTrainedModel, cfg: LLMConfig) -> list[str]:
    """The configured LoRA target modules, or the architecture's default."""
    if cfg.lora_target_modules:
        return list(cfg.lora_target_modules)
    if (arch := model.config.model_type) not in LORA_TARGETS:
        raise ValueError(f"no default LoRA targets for architecture {arch!r}; set model.llm.lora_target_modules")
    return LORA_TARGETS[arch]


def add_lora(model: PreTrainedModel, cfg: LLMConfig) -> torch.nn.Module:
    """Freeze the base LLM and wrap it with LoRA adapters (peft)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(
        task_type="CAUSAL_LM", r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=lora_targets(model, cfg),
        fan_in_fan_out=model.config.model_type == "gpt2",  # GPT-2 uses Conv1D (transposed) layers
    ))
