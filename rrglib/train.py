"""The training loop, and the paper's two-stage switch (`unfreeze_encoder`).

Reads top to bottom: config -> data -> model -> optimizer -> loop -> checkpoint. Strategies:
`frozen` (the encoder never trains), `finetune` (it trains from the first step), `two_stage`
(frozen for `train.stage1_epochs`, then unfrozen with its own learning rate and warm-up).

    python -m rrglib.train --config configs/demo.yaml [--resume] [--overwrite] [section.key=value ...]
    accelerate launch --multi_gpu --num_processes 2 -m rrglib.train --config configs/smoke.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list
from tqdm.auto import tqdm

from .checkpoint import (
    checkpoint_state,
    load_checkpoint,
    open_run_dir,
    save_checkpoint,
    state_digest,
)
from .config import ConfigError, RunConfig, load_config
from .data import dataset_for, load_manifest
from .devices import bf16_is_emulated, use_deterministic_kernels
from .features import Batcher, cached_features, model_inputs, pair_images
from .model import ReportGenerator, finding_targets
from .validation import validate

# -- the two stages ---------------------------------------------------------------------------


def stage_of(cfg: RunConfig, epoch: int) -> int:
    """1 while the encoder is frozen, 2 once it trains."""
    if cfg.train.strategy == "two_stage":
        return 1 if epoch < cfg.train.stage1_epochs else 2
    return 1 if cfg.train.strategy == "frozen" else 2


def unfreeze_encoder(model: ReportGenerator, optimizer: torch.optim.Optimizer, cfg: RunConfig,
                     start_step: int, accelerator: Accelerator | None = None) -> torch.nn.Module:
    """Stage 2: the encoder trains from `start_step` on, in its own optimizer group.

    Returns the module to train: DDP must learn of the newly trainable parameters, so under
    several processes the model is prepared again (pass `accelerator` once it was).
    """
    t = cfg.train
    model.set_encoder_trainable(True)
    getattr(optimizer, "optimizer", optimizer).add_param_group({
        "name": "encoder", "params": list(model.encoder.parameters()), "base_lr": t.lr_encoder,
        "warmup": t.encoder_warmup_steps, "start_step": start_step, "weight_decay": t.weight_decay,
        "lr": 0.0})
    if accelerator is not None and accelerator.num_processes > 1:
        return accelerator.prepare_model(model)
    return model


# -- optimizer and schedule -------------------------------------------------------------------


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Linear warm-up, then cosine / linear decay to zero (or constant)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine; config.py allows no other value


class GroupSchedule:
    """Per-group warm-up + decay; a group may join late (the encoder at the stage switch)."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, schedule: str):
        self.optimizer, self.total, self.schedule = optimizer, total_steps, schedule

    def apply(self, step: int) -> None:
        for g in self.optimizer.param_groups:
            start = g["start_step"]
            g["lr"] = g["base_lr"] * lr_factor(step - start, g["warmup"], self.total - start, self.schedule)


def param_groups(model: ReportGenerator, cfg: RunConfig) -> list[dict[str, Any]]:
    """Mapper (+aux head) and LoRA groups; each with its own learning rate."""
    t = cfg.train
    mapper = [*model.mapper.parameters(), *(model.aux_head.parameters() if model.aux_head else [])]
    lora = [p for p in model.llm.parameters() if p.requires_grad]
    return [
        {"name": "mapper", "params": mapper, "base_lr": t.lr_mapper, "warmup": t.warmup_steps, "start_step": 0},
        {"name": "lora", "params": lora, "base_lr": t.lr_lora, "warmup": t.warmup_steps, "start_step": 0},
    ]


LENGTH_GROUP = 16  # batches per group sorted by length (group_by_length)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                  lengths: list[int] | None = None) -> list[list[int]]:
    """This rank's batches for one epoch: a seeded permutation, equal batch counts on every rank.

    With `lengths` (report tokens per study), each run of LENGTH_GROUP batches of the permutation
    is sorted by length before it is cut into batches, and the batch order is then shuffled: the
    same studies per epoch, little padding inside a batch, no long-to-short order over the epoch.
    """
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    perm = torch.randperm(n, generator=gen).tolist()
    per_rank = len(perm) // world  # drop the tail so every rank takes the same number of steps
    mine = perm[rank * per_rank:(rank + 1) * per_rank]
    if lengths is not None:
        size = batch_size * LENGTH_GROUP
        mine = [i for g in range(0, len(mine), size) for i in sorted(mine[g:g + size], key=lambda j: -lengths[j])]
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    if lengths is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
    return batches


def aux_warmup(model: ReportGenerator, features: torch.Tensor, labels: torch.Tensor, steps: int, lr: float,
               batch_size: int, seed: int) -> float:
    """Fit mapper + finding head to the labels from frozen-encoder features; returns the last loss.

    Cheap (no LLM forward): the LLM then starts from soft prompts that already carry the
    findings, so the demo's short runs spend their LLM steps learning to read them.
    """
    if model.aux_head is None:
        raise ValueError("train.aux_warmup_steps needs model.aux_loss_weight > 0 (there is no finding head)")
    params = [*model.mapper.parameters(), *model.aux_head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)  # its own generator: the global RNG is not drawn from
    targets, was_training = finding_targets(labels), model.training
    model.mapper.train()
    model.aux_head.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        idx = torch.randint(0, len(features), (min(batch_size, len(features)),), generator=gen)
        logits = model.aux_head(model.mapper(features[idx].float()))
        loss = F.binary_cross_entropy_with_logits(logits, targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.train(was_training)
    return float(loss.detach())


# -- setup ------------------------------------------------------------------------------------


def make_accelerator(cfg: RunConfig) -> Accelerator:
    """Device, precision and processes (accelerate); warns where bf16 would be emulated."""
    t = cfg.train
    # cpu=True on a machine without CUDA lets `torchrun --nproc_per_node N` form a gloo group
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator = Accelerator(mixed_precision=t.mixed_precision, cpu=not torch.cuda.is_available(),
                              kwargs_handlers=[ddp], log_with=t.log_with, project_dir=cfg.output_dir)
    if t.mixed_precision == "bf16" and bf16_is_emulated(accelerator.device):
        accelerator.print(f"warning: bf16 on this CPU ({torch.backends.cpu.get_cpu_capability()}) is "
                          "emulated and very slow; set train.mixed_precision: 'no' (see benchmarks/)")
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    use_deterministic_kernels(accelerator.device, t.deterministic)
    return accelerator


def build_data(cfg: RunConfig, model: ReportGenerator,
               accelerator: Accelerator) -> tuple[Batcher, Batcher, torch.Tensor | None]:
    """Training and validation batches, and the features the aux warm-up fits (or None)."""
    manifest = load_manifest(cfg.data.manifest)
    manifest_file = Path(cfg.data.manifest)
    manifest_file = manifest_file / "manifest.csv" if manifest_file.is_dir() else manifest_file
    t = cfg.train
    train_ds, val_ds = dataset_for(cfg, "train", manifest), dataset_for(cfg, "validate", manifest)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise ValueError(f"{manifest_file}: need studies in both the train and validate splits "
                         f"(found {len(train_ds)} and {len(val_ds)})")
    cut = int(model.tokenize_reports(list(train_ds.df["report"]))["truncated"].sum())
    if cut:  # trained without eos, so the model never learns to stop mid-report
        accelerator.print(f"{cut} of {len(train_ds)} training reports exceed model.llm.max_report_tokens="
                          f"{cfg.model.llm.max_report_tokens} and are cut (no eos on them)")
    shown, order = pair_images(train_ds, cfg.data.image_pairing, t.seed)  # validation: own images
    train_batcher = Batcher(shown, model, cfg.data.num_workers)
    val_batcher = Batcher(val_ds, model, cfg.data.num_workers)
    use_cache = t.cache_features and t.strategy != "finetune"
    feats = None
    if use_cache or t.aux_warmup_steps > 0:
        feats = cached_features(model, cfg, train_ds, manifest_file, "train", accelerator)[order]
    if use_cache:
        train_batcher.features = feats
        val_batcher.features = cached_features(model, cfg, val_ds, manifest_file, "validate", accelerator)
    return train_batcher, val_batcher, (feats if t.aux_warmup_steps > 0 else None)


def from_main(accelerator: Accelerator, value: Any) -> Any:
    """The main process's `value` (a decision, an error), on every process."""
    if accelerator.num_processes == 1:
        return value
    box = [value]
    broadcast_object_list(box)
    return box[0]


class Log:
    """metrics.jsonl (main process) plus an optional accelerate tracker."""

    def __init__(self, run_dir: Path, accelerator: Accelerator, tracker: bool):
        self.file, self.accelerator, self.tracker = run_dir / "metrics.jsonl", accelerator, tracker

    def trim(self, step: int) -> None:
        """On resume: drop records of steps after the checkpoint (the resumed run writes them again)."""
        if not (self.accelerator.is_main_process and self.file.is_file()):
            return
        keep = []
        for line in self.file.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line + "\n")
            except json.JSONDecodeError:  # the last line of a run killed while writing it
                continue
        self.file.write_text("".join(keep))

    def __call__(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with open(self.file, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        if self.tracker:
            numbers = {k: v for k, v in record.items() if isinstance(v, (int, float))}
            self.accelerator.log(numbers, step=record.get("step"))


# -- the loop ---------------------------------------------------------------------------------


@dataclass
class Run:
    """What every step of the loop works on."""

    cfg: RunConfig
    accelerator: Accelerator
    model: ReportGenerator
    wrapped: torch.nn.Module  # the model as accelerate prepared it (DDP under several processes)
    optimizer: Any
    schedule: GroupSchedule
    log: Log
    state: dict[str, Any]  # the loop's position and best-so-far, saved in every checkpoint
    run_dir: Path


def start_or_resume(run: Run, ckpt: Path | None, changes: dict[str, Any], warm_feats: torch.Tensor | None,
                    labels: torch.Tensor, switch_step: int) -> None:
    """Restore a checkpoint, or start afresh (aux warm-up, the encoder group for finetune)."""
    cfg, model, t = run.cfg, run.model, run.cfg.train
    if ckpt is not None:
        run.state = checkpoint_state(ckpt)
        if run.state["stage"] == 2:  # the optimizer needs the encoder group before its state loads
            unfreeze_encoder(model, run.optimizer, cfg, run.state["encoder_start_step"])
        load_checkpoint(ckpt, model, run.optimizer)
        run.log.trim(run.state["global_step"])
        if changes:
            run.log({"kind": "config_change", "step": run.state["global_step"],
                     "changes": {k: list(v) for k, v in changes.items()}})
        run.accelerator.print(f"resuming {run.run_dir} from {ckpt.name}")
        return
    if warm_feats is not None:
        tic = time.perf_counter()
        loss = aux_warmup(model, warm_feats, labels, t.aux_warmup_steps, t.lr_mapper, cfg.data.batch_size, t.seed)
        seconds = time.perf_counter() - tic
        run.log({"kind": "aux_warmup", "steps": t.aux_warmup_steps, "aux_loss": loss, "seconds": seconds})
        run.accelerator.print(f"aux warm-up: {t.aux_warmup_steps} steps, finding loss {loss:.3f}, {seconds:.1f} s")
    if run.state["stage"] == 2:
        unfreeze_encoder(model, run.optimizer, cfg, switch_step)


def train_epoch(run: Run, batcher: Batcher, epoch: int, stage: int, use_features: bool) -> float | None:
    """One epoch of optimizer steps (resuming mid-epoch); returns training samples per second."""
    cfg, acc, state, t = run.cfg, run.accelerator, run.state, run.cfg.train
    world = acc.num_processes
    batches = epoch_batches(len(batcher.dataset), cfg.data.batch_size, t.seed, epoch, acc.process_index, world,
                            batcher.lengths() if cfg.data.group_by_length else None)
    start = state["batch"] if epoch == state["epoch"] else 0
    run.wrapped.train()
    bar = tqdm(total=len(batches), initial=start, desc=f"epoch {epoch} (stage {stage})",
               disable=not acc.is_main_process, dynamic_ncols=True)
    tic, seen, tokens = time.perf_counter(), 0, 0
    for i, batch in enumerate(batcher.batches(batches[start:], use_features), start=start):
        inputs = model_inputs(batch, acc.device)
        boundary = (i + 1) % t.grad_accum_steps == 0 or i == len(batches) - 1
        with contextlib.nullcontext() if boundary else acc.no_sync(run.wrapped):
            with acc.autocast():
                out = run.wrapped(**inputs)
            acc.backward(out.loss / t.grad_accum_steps)
        seen += len(batch["reports"])
        tokens += int(inputs["report_attention_mask"].sum())
        if not boundary:
            continue
        run.schedule.apply(state["global_step"])
        if t.max_grad_norm:
            acc.clip_grad_norm_([p for p in run.model.parameters() if p.requires_grad], t.max_grad_norm)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        state.update(global_step=state["global_step"] + 1, batch=i + 1, epoch=epoch)
        rate = seen * world / (time.perf_counter() - tic)
        bar.update(i + 1 - bar.n)
        bar.set_postfix(loss=f"{out.loss.item():.3f}", sps=f"{rate:.2f}")
        if state["global_step"] % t.log_every_steps == 0:
            aux = {} if out.aux_loss is None else {"aux_loss": out.aux_loss.item()}
            run.log({"kind": "step", "epoch": epoch, "stage": stage, "step": state["global_step"],
                     "loss": out.loss.item(), "lm_loss": out.lm_loss.item(), "samples_per_s": rate,
                     "tokens_per_s": tokens * world / (time.perf_counter() - tic),
                     **{f"lr_{g['name']}": g["lr"] for g in run.optimizer.param_groups}, **aux})
        if t.checkpoint_every_steps and state["global_step"] % t.checkpoint_every_steps == 0:
            acc.wait_for_everyone()
            if acc.is_main_process:
                save_checkpoint(run.run_dir, run.model, run.optimizer, state)
    bar.close()
    return seen * world / (time.perf_counter() - tic) if seen else None


def end_epoch(run: Run, val_batcher: Batcher, epoch: int, stage: int, use_features: bool, rate: float | None,
              on_epoch_end: Callable[[int, ReportGenerator, dict[str, Any]], None] | None) -> bool:
    """Validate (main process), keep the best model, checkpoint; True if early stopping says stop."""
    acc, state, t = run.accelerator, run.state, run.cfg.train
    acc.wait_for_everyone()
    stop = False
    if acc.is_main_process:
        metrics = validate(run.model, val_batcher, run.cfg, acc, use_features=use_features)
        metrics.update(kind="epoch", epoch=epoch, stage=stage, step=state["global_step"], train_samples_per_s=rate)
        run.log(metrics)
        acc.print(f"epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        value, best = metrics[t.best_metric], state["best"]
        if best is None or (value < best if t.best_metric.endswith("loss") else value > best):
            state.update(best=value, best_epoch=epoch, bad_epochs=0)
            run.model.save_pretrained(run.run_dir / "best", run_config=run.cfg)
        else:
            state["bad_epochs"] += 1
        if on_epoch_end is not None:
            on_epoch_end(epoch, run.model, metrics)
        stop = t.early_stopping_patience is not None and state["bad_epochs"] >= t.early_stopping_patience
    stop = from_main(acc, stop)
    state.update(epoch=epoch + 1, batch=0)
    if acc.is_main_process:
        save_checkpoint(run.run_dir, run.model, run.optimizer, state)
    return stop


def finish(run: Run, stopped: bool, throughput: dict[int, list[float]]) -> None:
    """Final weights and summary.json; each process's weight digest under several processes."""
    acc, t, state = run.accelerator, run.cfg.train, run.state
    acc.wait_for_everyone()
    if acc.num_processes > 1:  # a test checks that every rank ended with the same weights
        (run.run_dir / f"weights_digest.rank{acc.process_index}.txt").write_text(state_digest(run.model))
    if acc.is_main_process:
        run.model.save_pretrained(run.run_dir / "final", run_config=run.cfg)
        mean = {s: float(np.mean(v)) if v else None for s, v in throughput.items()}
        summary = {"run": run.cfg.name, "strategy": t.strategy, "epochs_run": state["epoch"],
                   "early_stopped": stopped, "best_metric": t.best_metric, "best": state["best"],
                   "best_epoch": state["best_epoch"], "samples_per_s_stage1": mean[1],
                   "samples_per_s_stage2": mean[2], "processes": acc.num_processes,
                   "mixed_precision": t.mixed_precision, "image_pairing": run.cfg.data.image_pairing,
                   "config_hash": run.cfg.hash()}
        (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if t.log_with:
        acc.end_training()
    acc.wait_for_everyone()


def train(cfg: RunConfig, resume: bool = False, overwrite: bool = False, allow_config_change: bool = False,
          on_epoch_end: Callable[[int, ReportGenerator, dict[str, Any]], None] | None = None) -> Path:
    """Train a ReportGenerator as configured; returns the run directory.

    `resume` continues the latest checkpoint (refusing a changed config unless
    `allow_config_change`); `overwrite` starts an existing run of ours again;
    `on_epoch_end(epoch, model, metrics)` is called on the main process after each validation.
    """
    t, run_dir = cfg.train, Path(cfg.output_dir)
    if not cfg.data.manifest:
        raise ConfigError("data.manifest is not set; pass data.manifest=path/to/manifest.csv")
    accelerator = make_accelerator(cfg)
    with contextlib.ExitStack() as held:
        # -- run directory: locked, checked, fresh or resumed (the main process decides) ---------
        opened: Any = None
        if accelerator.is_main_process:
            try:
                lock, ckpt, changes = open_run_dir(cfg, resume, overwrite, allow_config_change)
                held.callback(lock.__exit__)
                opened = (ckpt, changes)
            except (ValueError, FileExistsError) as exc:
                opened = exc
        opened = from_main(accelerator, opened)  # every process stops, none waits for the others
        if isinstance(opened, Exception):
            raise opened
        ckpt, changes = opened

        # -- model and data: the same initial mapper/LoRA on every rank and in every rerun -----
        torch.manual_seed(t.seed)
        random.seed(t.seed)
        np.random.seed(t.seed)
        model = ReportGenerator(cfg.model)
        train_batcher, val_batcher, warm_feats = build_data(cfg, model, accelerator)
        labels = train_batcher.dataset.labels
        if model.aux_head is not None:  # a resumed run overwrites this with its checkpoint
            model.aux_head.init_prior(finding_targets(labels))

        # -- optimizer and schedule ------------------------------------------------------------
        world, rank = accelerator.num_processes, accelerator.process_index
        n_batches = len(epoch_batches(len(labels), cfg.data.batch_size, t.seed, 0, rank, world))
        steps_per_epoch = math.ceil(n_batches / t.grad_accum_steps)
        switch_step = steps_per_epoch * (0 if t.strategy == "finetune" else t.stage1_epochs)
        optimizer = torch.optim.AdamW(param_groups(model, cfg), weight_decay=t.weight_decay)
        state = {"epoch": 0, "batch": 0, "global_step": 0, "stage": stage_of(cfg, 0),
                 "encoder_start_step": switch_step, "best": None, "best_epoch": None, "bad_epochs": 0}
        run = Run(cfg, accelerator, model, model, optimizer,
                  GroupSchedule(optimizer, steps_per_epoch * t.epochs, t.schedule),
                  Log(run_dir, accelerator, bool(t.log_with)), state, run_dir)
        start_or_resume(run, ckpt, changes, warm_feats, labels, switch_step)
        model.to(accelerator.device)
        run.wrapped, run.optimizer = accelerator.prepare(model, optimizer)
        if t.log_with:
            accelerator.init_trackers(cfg.name)

        # -- the loop: stage 1, the switch, stage 2 --------------------------------------------
        throughput: dict[int, list[float]] = {1: [], 2: []}
        stopped = False
        for epoch in range(run.state["epoch"], t.epochs):
            stage = stage_of(cfg, epoch)
            if stage == 2 and not model.encoder_trainable:  # the paper's two-stage switch
                run.wrapped = unfreeze_encoder(model, run.optimizer, cfg, run.state["global_step"], accelerator)
                accelerator.print(f"epoch {epoch}: stage 2, encoder unfrozen (lr {t.lr_encoder:g})")
            run.state["stage"] = stage
            use_features = train_batcher.features is not None and stage == 1
            rate = train_epoch(run, train_batcher, epoch, stage, use_features)
            if rate is not None:
                throughput[stage].append(rate)
            if end_epoch(run, val_batcher, epoch, stage, use_features, rate, on_epoch_end):
                accelerator.print(f"early stopping after epoch {epoch}")
                stopped = True
                break
        finish(run, stopped, throughput)
    return run_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train a report generator (frozen / finetune / two_stage).")
    parser.add_argument("--config", required=True, help="run config YAML (see configs/)")
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="start an existing run again (deletes only what a run wrote there)")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume: continue although settings that alter training changed")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.epochs=1")
    args = parser.parse_intermixed_args(argv)  # flags may follow the overrides
    try:
        cfg = load_config(args.config, args.overrides)
        train(cfg, resume=args.resume, overwrite=args.overwrite, allow_config_change=args.allow_config_change)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
