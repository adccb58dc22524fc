"""Write a report for each image file (PNG, JPEG or DICOM) with a trained run.

    python -m rrglib.generate IMAGE [IMAGE ...] --run runs/demo/two_stage [--checkpoint best]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .data import ImageLoadError, load_image
from .evaluate import autocast_for, load_run


def generate_for_files(paths: list[str | Path], run_dir: str | Path, checkpoint: str = "best",
                       num_beams: int | None = None, max_new_tokens: int | None = None) -> list[str]:
    """One generated report per image path, in order."""
    model, cfg = load_run(run_dir, checkpoint)
    size = cfg.model.encoder.image_size
    images = torch.stack([load_image(p, size, model.encoder.mean, model.encoder.std) for p in paths])
    decoding = cfg.generation
    if num_beams is not None:
        decoding.num_beams = num_beams
    if max_new_tokens is not None:
        decoding.max_new_tokens = max_new_tokens
    with autocast_for(cfg):
        return model.generate(images=images, max_new_tokens=decoding.max_new_tokens,
                              num_beams=decoding.num_beams, do_sample=decoding.do_sample,
                              repetition_penalty=decoding.repetition_penalty,
                              no_repeat_ngram_size=decoding.no_repeat_ngram_size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate a radiology report for each image.")
    parser.add_argument("images", nargs="+", help="PNG / JPEG / DICOM files")
    parser.add_argument("--run", required=True, help="training run directory")
    parser.add_argument("--checkpoint", default="best", choices=["best", "final"])
    parser.add_argument("--num-beams", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    args = parser.parse_args(argv)
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        print(f"error: no such image file: {', '.join(missing)}", file=sys.stderr)
        raise SystemExit(2)
    try:
        reports = generate_for_files(args.images, args.run, args.checkpoint, args.num_beams,
                                     args.max_new_tokens)
    except (FileNotFoundError, ImageLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    for path, report in zip(args.images, reports, strict=True):
        print(f"== {path}\n{report}\n")


if __name__ == "__main__":
    main()
