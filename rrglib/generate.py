"""Write a report for each image file (PNG, JPEG or DICOM) with a trained run.

    python -m rrglib.generate IMAGE [IMAGE ...] --run runs/demo/two_stage [--checkpoint best]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from .data import ImageLoadError, load_image
from .devices import autocast
from .evaluate import decoding_with, load_run, positive_int


def generate_for_files(paths: list[str | Path], run_dir: str | Path, checkpoint: str = "best",
                       num_beams: int | None = None, max_new_tokens: int | None = None,
                       device: torch.device | str | None = None) -> list[str]:
    """One generated report per image path, in order (on the accelerator when present)."""
    model, cfg = load_run(run_dir, checkpoint, device)
    decoding = decoding_with(cfg.generation, num_beams, max_new_tokens)
    device = next(model.parameters()).device
    enc = model.encoder
    images = torch.stack([load_image(p, cfg.model.encoder.image_size, enc.mean, enc.std) for p in paths])
    with autocast(cfg.train.mixed_precision, device):
        return model.generate(images=images.to(device), **dataclasses.asdict(decoding)).texts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate a radiology report for each image.")
    parser.add_argument("images", nargs="+", help="PNG / JPEG / DICOM files")
    parser.add_argument("--run", required=True, help="training run directory")
    parser.add_argument("--checkpoint", default="best", choices=["best", "final"])
    parser.add_argument("--num-beams", type=positive_int, default=None)
    parser.add_argument("--max-new-tokens", type=positive_int, default=None)
    args = parser.parse_args(argv)
    try:
        if missing := [p for p in args.images if not Path(p).is_file()]:
            raise FileNotFoundError(f"no such image file: {', '.join(missing)}")
        reports = generate_for_files(args.images, args.run, args.checkpoint, args.num_beams,
                                     args.max_new_tokens)
    except (FileNotFoundError, ImageLoadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    for path, report in zip(args.images, reports, strict=True):
        print(f"== {path}\n{report}\n")


if __name__ == "__main__":
    main()
