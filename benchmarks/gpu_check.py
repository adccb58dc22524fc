"""GPU path check (one script, a few minutes on one GPU): the paper's GPT2-S profile at real shapes.

    python benchmarks/gpu_check.py [--steps 20]

Randomly initialised GPT-2 small / large of the real architectures (no download needed) behind a
random ResNet50 and the mapper, bf16 autocast, fused AdamW, SDPA attention, optionally
torch.compile. Prints samples/s and MFU against the measured bf16 matmul peak, the measured peak
memory of GPT2-S and GPT2-L training steps, and a computed estimate for OpenLLaMA-7B with LoRA
and gradient checkpointing. On a CPU-only machine it prints the 7B estimate and stops.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import llm_train_flops_per_token, machine, matmul_peak, table  # noqa: E402

from rrglib.config import EncoderConfig, LLMConfig, MapperConfig  # noqa: E402
from rrglib.encoder import build_encoder  # noqa: E402
from rrglib.llm import add_lora  # noqa: E402
from rrglib.mapper import Mapper  # noqa: E402

GPT2 = {"gpt2": dict(n_embd=768, n_layer=12, n_head=12), "gpt2-large": dict(n_embd=1280, n_layer=36, n_head=20)}
LLAMA7B = dict(params=6.74e9, hidden=4096, layers=32, vocab=32000)


def estimate_7b_gb(batch: int, seq: int, lora_params: float = 4.2e6, mapper_params: float = 4.5e6) -> dict:
    """Memory (GiB) of a LoRA step on OpenLLaMA-7B with gradient checkpointing, bf16 weights."""
    gib = 2**30
    weights = LLAMA7B["params"] * 2 / gib  # frozen base in bf16
    trainable = (lora_params + mapper_params + 25.6e6) * 16 / gib  # fp32 weights+grads+Adam m,v (ResNet50 incl.)
    # checkpointing keeps each layer's input (bf16) plus one layer's full activations at a time
    checkpoints = LLAMA7B["layers"] * batch * seq * LLAMA7B["hidden"] * 2 / gib
    one_layer = batch * seq * LLAMA7B["hidden"] * 34 / gib  # ~34 bytes/token/hidden (Korthikanti et al.)
    logits = batch * seq * LLAMA7B["vocab"] * 4 * 2 / gib  # fp32 logits and their gradient
    total = weights + trainable + checkpoints + one_layer + logits
    return {"weights": weights, "trainable+Adam": trainable, "checkpoints": checkpoints,
            "one layer": one_layer, "logits": logits, "total": total}


def step_stats(llm_name: str, batch: int, seq: int, steps: int, compile_model: bool) -> dict:
    dev = torch.device("cuda")
    torch.cuda.reset_peak_memory_stats()
    llm = GPT2LMHeadModel(GPT2Config(**GPT2[llm_name], vocab_size=50257, n_positions=1024)).to(dev)
    llm.config._attn_implementation = "sdpa"
    llm = add_lora(llm, LLMConfig(name=llm_name))
    encoder = build_encoder(EncoderConfig(name="resnet50", pretrained=False)).to(dev)
    mapper = Mapper(encoder.out_channels, llm.config.hidden_size, MapperConfig()).to(dev)
    params = [p for m in (llm, encoder, mapper) for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=True)
    images = torch.randn(batch, 3, 224, 224, device=dev)
    ids = torch.randint(0, 50257, (batch, seq), device=dev)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            prompts = mapper(encoder(images))
            embeds = torch.cat([prompts, llm.get_input_embeddings()(ids)], 1)
            logits = llm(inputs_embeds=embeds).logits
            loss = torch.nn.functional.cross_entropy(logits[:, prompts.shape[1]:-1].float().flatten(0, 1),
                                                     ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if compile_model:
        llm = torch.compile(llm)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    sec = (time.perf_counter() - tic) / steps
    n = sum(p.numel() for p in llm.parameters())
    tokens = batch * (seq + 32)
    return {"llm": llm_name, "batch": batch, "samples/s": batch / sec,
            "flop/s": llm_train_flops_per_token(n) * tokens / sec,
            "peak GiB": torch.cuda.max_memory_allocated() / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    est = estimate_7b_gb(batch=4, seq=args.seq + 32)
    print("OpenLLaMA-7B + LoRA, gradient checkpointing, batch 4, computed GiB: "
          + ", ".join(f"{k} {v:.1f}" for k, v in est.items()))
    if not torch.cuda.is_available():
        print("no GPU here: the measured part needs one")
        return
    peak = matmul_peak(torch.bfloat16)
    rows = []
    for name, batch in (("gpt2", 16), ("gpt2", 64), ("gpt2-large", 16)):
        r = step_stats(name, batch, args.seq, args.steps, args.compile)
        r["MFU (bf16)"] = f"{r.pop('flop/s') / peak:.1%}"
        r["samples/s"] = f"{r['samples/s']:.1f}"
        r["peak GiB"] = f"{r['peak GiB']:.1f}"
        rows.append(r)
        torch.cuda.empty_cache()
    print(f"bf16 matmul peak: {peak / 1e12:.0f} TFLOP/s")
    print(table(rows, ["llm", "batch", "samples/s", "MFU (bf16)", "peak GiB"]))


if __name__ == "__main__":
    main()
