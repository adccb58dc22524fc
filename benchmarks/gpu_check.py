"""GPU path check (one script, a few minutes on one GPU): the paper's models at real shapes.

    python benchmarks/gpu_check.py [--config configs/paper_gpt2s.yaml] [--steps 20]

Builds the real `ReportGenerator` of each config (encoder -> mapper -> LLM + LoRA, with the
prompt text and every option of the config), with random weights so no download is needed
(`gpt2` -> `random-gpt2`, `gpt2-large` -> `random-gpt2-large`; `--pretrained` keeps the
config's weights). Times a stage-2 training step (forward + backward + AdamW, encoder trainable)
and greedy generation under the run's precision (`rrglib.devices.autocast`), and prints
samples/s, MFU against the measured matmul peak and peak memory, plus a computed estimate for
OpenLLaMA-7B with LoRA and gradient checkpointing. Without a GPU it says so and exits 0
(`--allow-cpu` runs it anyway, e.g. on configs/smoke.yaml to check the script).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import llm_train_flops_per_token, machine, matmul_peak, sync, table  # noqa: E402

from rrglib.config import RunConfig, load_config  # noqa: E402
from rrglib.devices import autocast, default_device  # noqa: E402
from rrglib.model import ReportGenerator  # noqa: E402

RANDOM_TWINS = {"gpt2": "random-gpt2", "gpt2-large": "random-gpt2-large"}
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


def build(cfg: RunConfig, pretrained: bool, device: torch.device) -> ReportGenerator:
    """The config's ReportGenerator on `device`, with random weights unless `pretrained`."""
    if not pretrained:
        cfg.model.encoder.pretrained = False
        cfg.model.llm.name = RANDOM_TWINS.get(cfg.model.llm.name, cfg.model.llm.name)
    model = ReportGenerator(cfg.model).to(device)
    model.set_encoder_trainable(True)  # stage 2: the most expensive step of the method
    return model.train()


def timed(fn, repeats: int) -> float:
    """Seconds per call of `fn` after two warm-up calls."""
    for _ in range(2):
        fn()
    sync()
    tic = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - tic) / repeats


def measure(cfg: RunConfig, batch: int, steps: int, new_tokens: int, pretrained: bool) -> dict:
    """Training step and generation speed of one config at one batch size."""
    device = default_device()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = build(cfg, pretrained, device)
    size, seq = cfg.model.encoder.image_size, cfg.model.llm.max_report_tokens
    images = torch.randn(batch, 3, size, size, device=device)
    ids = torch.randint(0, min(len(model.tokenizer), 512), (batch, seq), device=device)
    mask = torch.ones_like(ids)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    precision = cfg.train.mixed_precision

    def step() -> None:
        with autocast(precision, device):
            loss = model(ids, mask, images=images).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def generate() -> None:
        with autocast(precision, device):
            model.generate(images=images, max_new_tokens=new_tokens, min_new_tokens=new_tokens)

    train_s = timed(step, steps)
    model.eval()
    gen_s = timed(generate, max(1, steps // 5))
    n_llm = sum(p.numel() for p in model.llm.parameters())
    tokens = batch * (seq + model.num_prefix_tokens)
    return {"llm": cfg.model.llm.name, "batch": batch, "precision": precision,
            "train samples/s": batch / train_s, "flop/s": llm_train_flops_per_token(n_llm) * tokens / train_s,
            "gen reports/s": batch / gen_s,
            "peak GiB": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=None,
                        help="run config(s); default configs/paper_gpt2s.yaml and paper_gpt2l.yaml")
    parser.add_argument("--batch", type=int, action="append", default=None, help="default 16 and 64")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--pretrained", action="store_true", help="the config's own weights (needs them)")
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (to check the script)")
    args = parser.parse_args(argv)
    configs = args.config or ["configs/paper_gpt2s.yaml", "configs/paper_gpt2l.yaml"]
    print(f"machine: {machine()}")
    est = estimate_7b_gb(batch=4, seq=128 + 32)
    print("OpenLLaMA-7B + LoRA, gradient checkpointing, batch 4, computed GiB: "
          + ", ".join(f"{k} {v:.1f}" for k, v in est.items()))
    if default_device().type != "cuda" and not args.allow_cpu:
        print("no GPU here: gpu_check measures the paper's models on a GPU; nothing measured "
              "(--allow-cpu runs it anyway)")
        return
    peak = matmul_peak(torch.bfloat16 if default_device().type == "cuda" else torch.float32)
    rows = []
    for path in configs:
        for batch in args.batch or [16, 64]:
            r = measure(load_config(path), batch, args.steps, args.new_tokens, args.pretrained)
            r["MFU"] = f"{r.pop('flop/s') / peak:.1%}"
            for key in ("train samples/s", "gen reports/s", "peak GiB"):
                r[key] = f"{r[key]:.1f}"
            rows.append(r)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    print(f"matmul peak: {peak / 1e12:.1f} TFLOP/s")
    print(table(rows, ["llm", "batch", "precision", "train samples/s", "MFU", "gen reports/s", "peak GiB"]))


if __name__ == "__main__":
    main()
