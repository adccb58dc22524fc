"""Training throughput per stage and precision, with and without cached encoder features.

    python benchmarks/bench_train.py [--config configs/demo.yaml] [--steps 4] [--precisions fp32 bf16]

Prints samples/s, tokens/s, the achieved FLOP/s as a fraction of this machine's matmul peak
measured in the same run and dtype (MFU), and peak memory. Synthetic inputs of the profile's
shapes (reports of `--report-tokens` tokens); optimizer steps included.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DTYPES,
    device,
    llm_train_flops_per_token,
    machine,
    matmul_peak,
    peak_memory_mb,
    sync,
    table,
)

from rrglib.config import load_config  # noqa: E402
from rrglib.model import ReportGenerator  # noqa: E402


def run_case(model: ReportGenerator, stage: int, cached: bool, precision: str, batch: int, tokens: int,
             steps: int) -> dict:
    dev = device()
    model.set_encoder_trainable(stage == 2)
    model.train()
    size = model.cfg.encoder.image_size
    images = torch.randn(batch, 3, size, size, device=dev)
    with torch.no_grad():
        features = model.encode_images(images) if cached else None
    ids = torch.randint(10, 1000, (batch, tokens), device=dev)
    mask = torch.ones_like(ids)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    dtype = DTYPES[precision]
    amp = torch.autocast(dev.type, dtype=dtype, enabled=precision != "fp32")

    def step() -> None:
        with amp:
            out = model(ids, mask, images=None if cached else images, features=features)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    sync()
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - tic) / steps
    seq = model.num_prefix_tokens + tokens
    n_llm = sum(p.numel() for p in model.llm.parameters())
    flops = llm_train_flops_per_token(n_llm) * seq * batch
    return {"stage": stage, "cached": cached, "precision": precision, "samples/s": batch / seconds,
            "tokens/s": batch * seq / seconds, "flop/s": flops / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--report-tokens", type=int, default=40)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--cases", nargs="+", default=["1c", "1", "2"],
                        help="stage 1 with cached features (1c), stage 1 from images (1), stage 2 (2)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    model = ReportGenerator(cfg.model).to(device())
    print(f"machine: {machine()}\nconfig: {args.config}, batch {args.batch}, report tokens {args.report_tokens}, "
          f"{args.steps} timed steps (encoder FLOPs not counted in MFU)")
    peaks = {p: matmul_peak(DTYPES[p]) for p in args.precisions}
    rows = []
    for precision in args.precisions:
        for case in args.cases:
            stage, cached = int(case[0]), case.endswith("c")
            r = run_case(model, stage, cached, precision, args.batch, args.report_tokens, args.steps)
            r["matmul peak GFLOP/s"] = f"{peaks[precision] / 1e9:.0f}"
            r["MFU"] = f"{r.pop('flop/s') / peaks[precision]:.1%}"
            r["samples/s"] = f"{r['samples/s']:.2f}"
            r["tokens/s"] = f"{r['tokens/s']:.0f}"
            rows.append(r)
    print(table(rows, ["stage", "cached", "precision", "samples/s", "tokens/s", "matmul peak GFLOP/s", "MFU"]))
    base = {(r["stage"], r["cached"]): float(r["samples/s"]) for r in rows if r["precision"] == "fp32"}
    for r in rows:
        if r["precision"] != "fp32" and (r["stage"], r["cached"]) in base:
            ratio = float(r["samples/s"]) / base[(r["stage"], r["cached"])]
            print(f"{r['precision']} / fp32, stage {r['stage']}, cached={r['cached']}: {ratio:.2f}x")
    if (1, True) in base and (1, False) in base:
        print(f"cached features / images, stage 1 fp32: {base[(1, True)] / base[(1, False)]:.2f}x")
    print(f"peak memory: {peak_memory_mb():.0f} MB")


if __name__ == "__main__":
    main()
