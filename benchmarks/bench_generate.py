"""Generation throughput: batch 1 vs batch 16, greedy vs beam search.

    python benchmarks/bench_generate.py [--config configs/demo.yaml] [--new-tokens 60]

Every sequence is forced to `--new-tokens` tokens (min_new_tokens), so the ratios measure the
batching, not early stopping. Prints reports/s, tokens/s and each row's ratio to batch 1 greedy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, peak_memory_mb, sync, table  # noqa: E402

from rrglib.config import load_config  # noqa: E402
from rrglib.devices import autocast, default_device, place  # noqa: E402
from rrglib.model import ReportGenerator  # noqa: E402


def measure(model: ReportGenerator, batch: int, beams: int, new_tokens: int, reports: int,
            precision: str = "no") -> float:
    device = default_device()
    size = model.cfg.encoder.image_size
    with torch.no_grad():
        feats = model.encode_images(torch.randn(batch, 3, size, size, device=device))
    with autocast(precision, device):
        model.generate(features=feats[:1], max_new_tokens=4)  # warm-up
        sync()
        done, tic = 0, time.perf_counter()
        while done < reports:
            model.generate(features=feats, max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=beams)
            done += batch
        sync()
    return done / (time.perf_counter() - tic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--new-tokens", type=int, default=60)
    parser.add_argument("--reports", type=int, default=16, help="reports per measurement (at least one batch)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    model = place(ReportGenerator(cfg.model)).eval()
    print(f"machine: {machine()}\nconfig: {args.config}, {args.new_tokens} new tokens per report")
    rows = []
    for batch, beams in ((1, 1), (16, 1), (1, 3), (16, 3)):
        n = max(args.reports if batch > 1 else max(2, args.reports // 8), batch)
        rate = measure(model, batch, beams, args.new_tokens, n, cfg.train.mixed_precision)
        rows.append({"batch": batch, "decoding": "greedy" if beams == 1 else f"beam {beams}",
                     "reports/s": rate, "tokens/s": rate * args.new_tokens})
    base = rows[0]["reports/s"]
    for r in rows:
        r["ratio to batch 1 greedy"] = f"{r['reports/s'] / base:.2f}x"
        r["reports/s"] = f"{r['reports/s']:.3f}"
        r["tokens/s"] = f"{r['tokens/s']:.1f}"
    print(table(rows, ["batch", "decoding", "reports/s", "tokens/s", "ratio to batch 1 greedy"]))
    print(f"peak memory: {peak_memory_mb():.0f} MB")


if __name__ == "__main__":
    main()
