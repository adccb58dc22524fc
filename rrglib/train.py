"""The two-stage training loop.

Reads top to bottom: config -> data -> model -> optimizer -> loop -> checkpoint.
Strategies: `frozen` (encoder never trains), `finetune` (encoder trains from the first step),
`two_stage` (encoder frozen for `stage1_epochs`, then unfrozen; at the switch the optimizer
gains an encoder parameter group with its own learning rate and warm-up).

Usage:
    python -m rrglib.train --config configs/demo.yaml [--resume] [section.key=value ...]
    accelerate launch --num_processes 2 --cpu -m rrglib.train --config configs/smoke.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .assets import cache_dir
from .config import RunConfig, load_config
from .data import ReportCollator, ReportDataset, load_manifest
from .model import ReportGenerator, finding_targets

# ---------------------------------------------------------------------------------------
# small pieces
# ---------------------------------------------------------------------------------------


def stage_of(cfg: RunConfig, epoch: int) -> int:
    """1 while the encoder is frozen, 2 once it trains."""
    strategy = cfg.train.strategy
    if strategy == "frozen":
        return 1
    if strategy == "finetune":
        return 2
    return 1 if epoch < cfg.train.stage1_epochs else 2


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Linear warm-up, then cosine / linear decay to zero (or constant)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"train.schedule must be cosine, linear or constant, got {schedule!r}")


class GroupSchedule:
    """Per-group warm-up + decay; a group may join late (the encoder at the stage switch)."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, schedule: str):
        self.optimizer, self.total, self.schedule = optimizer, total_steps, schedule

    def apply(self, step: int) -> None:
        for group in self.optimizer.param_groups:
            local = step - group["start_step"]
            total = self.total - group["start_step"]
            group["lr"] = group["base_lr"] * lr_factor(local, group["warmup"], total, self.schedule)


def param_groups(model: ReportGenerator, cfg: RunConfig) -> list[dict[str, Any]]:
    """Mapper (+aux head) and LoRA groups; each with its own learning rate."""
    t = cfg.train
    mapper = list(model.mapper.parameters()) + (list(model.aux_head.parameters()) if model.aux_head else [])
    lora = [p for p in model.llm.parameters() if p.requires_grad]
    return [
        {"name": "mapper", "params": mapper, "base_lr": t.lr_mapper, "warmup": t.warmup_steps, "start_step": 0},
        {"name": "lora", "params": lora, "base_lr": t.lr_lora, "warmup": t.warmup_steps, "start_step": 0},
    ]


def encoder_group(model: ReportGenerator, cfg: RunConfig, start_step: int) -> dict[str, Any]:
    return {"name": "encoder", "params": list(model.encoder.parameters()), "base_lr": cfg.train.lr_encoder,
            "warmup": cfg.train.encoder_warmup_steps, "start_step": start_step,
            "weight_decay": cfg.train.weight_decay, "lr": 0.0}


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """This rank's batches for one epoch: a seeded permutation, equal batch counts on every rank."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    per_rank = len(perm) // world  # drop the tail so every rank takes the same number of steps
    mine = perm[rank * per_rank:(rank + 1) * per_rank]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


def trainable_state(model: ReportGenerator) -> dict[str, torch.Tensor]:
    """Everything a run changes: mapper, aux head, LoRA and (once trained) the encoder."""
    keep = ("mapper.", "aux_head.")
    if model.stores_encoder:
        keep = keep + ("encoder.",)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()
            if k.startswith(keep) or "lora_" in k}


def state_digest(model: ReportGenerator) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def image_dependence(prompts: torch.Tensor) -> float:
    """Variance of the soft prompts across images / their mean squared norm (0 = image-blind)."""
    p = prompts.float().flatten(1)
    return float(((p - p.mean(0)) ** 2).sum(1).mean() / (p ** 2).sum(1).mean().clamp_min(1e-12))


def micro_f1(targets: np.ndarray, preds: np.ndarray) -> float:
    """Micro F1 of binary matrices (zero_division = 0)."""
    tp = float((targets * preds).sum())
    denom = float(targets.sum() + preds.sum())
    return 0.0 if denom == 0 else 2 * tp / denom


# ---------------------------------------------------------------------------------------
# encoder feature cache (only valid while the encoder is frozen)
# ---------------------------------------------------------------------------------------


def feature_cache_path(cfg: RunConfig, manifest_file: Path, split: str, n: int) -> Path:
    enc = cfg.model.encoder
    key = json.dumps({
        "encoder": [enc.name, enc.pretrained, enc.image_size], "blind": cfg.model.image_blind,
        "manifest": hashlib.sha256(manifest_file.read_bytes()).hexdigest(), "split": split, "n": n,
    }, sort_keys=True)
    root = Path(cfg.train.feature_cache_dir) if cfg.train.feature_cache_dir else cache_dir() / "features"
    return root / f"{enc.name}-{split}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"


@torch.no_grad()
def encode_dataset(model: ReportGenerator, dataset: ReportDataset, batch_size: int,
                   desc: str = "encoding", show: bool = True) -> torch.Tensor:
    """Frozen-encoder features of every study, in dataset order, as float16 (N, tokens, C)."""
    model.encoder.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        collate_fn=ReportCollator(None), generator=torch.Generator())
    chunks = [model.encode_images(b["images"]).half() for b in tqdm(loader, desc=desc, disable=not show)]
    return torch.cat(chunks)


def cached_features(model: ReportGenerator, cfg: RunConfig, dataset: ReportDataset, manifest_file: Path,
                    split: str, accelerator: Accelerator) -> torch.Tensor:
    """Load this split's encoder features from the cache, computing them once (main process)."""
    path = feature_cache_path(cfg, manifest_file, split, len(dataset))
    if accelerator.is_main_process and not path.is_file():
        feats = encode_dataset(model, dataset, cfg.data.eval_batch_size, f"caching {split} features")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial")
        save_file({"features": feats}, str(tmp))
        os.replace(tmp, path)
    accelerator.wait_for_everyone()
    return load_file(str(path))["features"]


class Batcher:
    """Turns index lists into model-ready batches, from cached features or from images."""

    def __init__(self, dataset: ReportDataset, model: ReportGenerator, num_workers: int = 0):
        self.dataset, self.model, self.num_workers = dataset, model, num_workers
        self.collate = ReportCollator(model.tokenize_reports)
        self.features: torch.Tensor | None = None

    def batches(self, index_lists: list[list[int]], use_features: bool):
        if use_features and self.features is not None:
            for idx in index_lists:
                reports = [str(self.dataset.df["report"].iloc[i]) for i in idx]
                tok = self.model.tokenize_reports(reports)
                yield {"features": self.features[idx].float(), "labels": self.dataset.labels[idx],
                       "report_input_ids": tok["input_ids"], "report_attention_mask": tok["attention_mask"],
                       "reports": reports, "ids": [str(self.dataset.df["id"].iloc[i]) for i in idx]}
        else:
            # a private generator: creating a DataLoader must not draw from the global RNG,
            # or a resumed run's dropout masks would drift from the uninterrupted run's
            loader = DataLoader(self.dataset, batch_sampler=index_lists, collate_fn=self.collate,
                                num_workers=self.num_workers, generator=torch.Generator())
            yield from loader


def model_inputs(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    keys = ("report_input_ids", "report_attention_mask", "images", "features", "labels")
    return {k: batch[k].to(device) for k in keys if k in batch}


# ---------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------


def aux_warmup(model: ReportGenerator, features: torch.Tensor, labels: torch.Tensor, steps: int, lr: float,
               batch_size: int, seed: int) -> float:
    """Fit mapper + finding head to the labels from frozen-encoder features, without the LLM.

    Cheap (no LLM forward): it hands the LLM soft prompts that already carry the findings, so
    the short runs of the demo spend their LLM steps learning to read them. Returns the last
    step's loss. Draws from its own generator, not the global RNG.
    """
    if model.aux_head is None:
        raise ValueError("train.aux_warmup_steps needs model.aux_loss_weight > 0 (there is no finding head)")
    params = list(model.mapper.parameters()) + list(model.aux_head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    targets = finding_targets(labels)
    was_training = model.training
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
    return float(loss)


def save_checkpoint(run_dir: Path, model: ReportGenerator, optimizer, state: dict[str, Any]) -> Path:
    """Write checkpoints/ckpt-<step>/ completely, then atomically point `latest` at it."""
    ckpt_root = run_dir / "checkpoints"
    name = f"ckpt-{state['global_step']:07d}-{state['epoch']}-{state['batch']}"
    tmp = ckpt_root / (name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "numpy": [np.random.get_state()[0], torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
                     *np.random.get_state()[2:]]}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    final = ckpt_root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer = ckpt_root / "latest.partial"
    pointer.write_text(name)
    os.replace(pointer, ckpt_root / "latest")  # the switch to the new checkpoint is one rename
    for old in ckpt_root.glob("ckpt-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_checkpoint(path: Path, model: ReportGenerator, optimizer, cfg: RunConfig) -> dict[str, Any]:
    state = json.loads((path / "state.json").read_text())
    missing = model.load_state_dict(load_file(str(path / "trainable.safetensors")), strict=False)
    if missing.unexpected_keys:
        raise ValueError(f"{path}: checkpoint does not match the model ({missing.unexpected_keys[:3]})")
    if state["stage"] == 2 and not any(g.get("name") == "encoder" for g in optimizer.param_groups):
        model.set_encoder_trainable(True)
        optimizer.add_param_group(encoder_group(model, cfg, state["encoder_start_step"]))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np_state = rng["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def validate(model: ReportGenerator, batcher: Batcher, cfg: RunConfig, accelerator: Accelerator,
             use_features: bool) -> dict[str, float]:
    """Val loss with true and with shuffled images, prompt image-dependence, aux F1, generation F1."""
    model.eval()
    device = accelerator.device
    n = len(batcher.dataset)
    index_lists = [list(range(i, min(n, i + cfg.data.eval_batch_size))) for i in range(0, n, cfg.data.eval_batch_size)]
    tot = tot_shuf = 0.0
    count = 0
    prompts, aux_logits, labels = [], [], []
    for batch in batcher.batches(index_lists, use_features):
        inputs = model_inputs(batch, device)
        tokens = int(inputs["report_attention_mask"].sum())
        with accelerator.autocast():
            out = model(**inputs)
            # another patient's image: a gap to the true-image loss means the report uses the image
            shuffled = {k: (v.roll(1, 0) if k in ("images", "features") else v) for k, v in inputs.items()}
            out_shuf = model(**shuffled)
        tot += out.lm_loss.item() * tokens
        tot_shuf += out_shuf.lm_loss.item() * tokens
        count += tokens
        prompts.append(out.prompts.float().cpu())
        labels.append(inputs["labels"].cpu())
        if out.aux_logits is not None:
            aux_logits.append(out.aux_logits.float().cpu())
    metrics = {"val_loss": tot / count, "val_loss_shuffled": tot_shuf / count,
               "prompt_image_dependence": image_dependence(torch.cat(prompts))}
    metrics["val_shuffle_gap"] = metrics["val_loss_shuffled"] - metrics["val_loss"]
    all_labels = torch.cat(labels)
    if aux_logits:
        preds = (torch.cat(aux_logits) > 0).float().numpy()
        metrics["aux_f1"] = micro_f1(finding_targets(all_labels).numpy(), preds)
    k = min(cfg.train.val_generation_samples, n)
    if k > 0:
        metrics["val_f1"] = generation_f1(model, batcher, cfg, accelerator, list(range(k)), use_features)
    return metrics


@torch.no_grad()
def generation_f1(model: ReportGenerator, batcher: Batcher, cfg: RunConfig, accelerator: Accelerator,
                  indices: list[int], use_features: bool) -> float:
    """Micro-F1 (14 observations, positive or uncertain = 1) of greedy reports, rule-based labels."""
    from .labeler import label_reports
    from .metrics import clinical_efficacy

    refs, hyps = [], []
    chunks = [indices[i:i + cfg.data.eval_batch_size] for i in range(0, len(indices), cfg.data.eval_batch_size)]
    for batch in batcher.batches(chunks, use_features):
        inputs = model_inputs(batch, accelerator.device)
        with accelerator.autocast():
            hyps += model.generate(images=inputs.get("images"), features=inputs.get("features"),
                                   max_new_tokens=cfg.generation.max_new_tokens).texts
        refs += batch["reports"]
    scores, _ = clinical_efficacy(label_reports(refs), label_reports(hyps))
    return scores["F1-RB-14-micro"]  # the same metric the evaluation reports


# ---------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------


def train(cfg: RunConfig, resume: bool = False, overwrite: bool = False,
          on_epoch_end: Callable[[int, ReportGenerator, dict[str, Any]], None] | None = None) -> Path:
    """Train a ReportGenerator as configured; returns the run directory.

    `on_epoch_end(epoch, model, metrics)` is called on the main process after each validation.
    """
    t = cfg.train
    run_dir = Path(cfg.output_dir)
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # cpu=True on a machine without CUDA lets `torchrun --nproc_per_node N` form a gloo group
    accelerator = Accelerator(mixed_precision=t.mixed_precision, kwargs_handlers=[ddp],
                              cpu=not torch.cuda.is_available(),
                              log_with=t.log_with, project_dir=str(run_dir))
    main = accelerator.is_main_process
    cpu_kind = torch.backends.cpu.get_cpu_capability()
    if t.mixed_precision == "bf16" and accelerator.device.type == "cpu" and "AVX512" not in cpu_kind:
        # measured: on an AVX2-only CPU a bf16 matmul ran ~400x slower than fp32
        accelerator.print(f"warning: bf16 on a CPU without AVX512 ({cpu_kind}) is emulated and very "
                          "slow; set train.mixed_precision: 'no' (see benchmarks/)")
    if t.num_threads:
        torch.set_num_threads(t.num_threads)

    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None and not resume and not overwrite:
        raise FileExistsError(f"{run_dir} already holds a checkpoint; pass --resume to continue it "
                              "or --overwrite to start again")
    if main and overwrite and not resume:
        shutil.rmtree(run_dir, ignore_errors=True)
    accelerator.wait_for_everyone()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.to_yaml(run_dir / "config.yaml")

    # -- data --------------------------------------------------------------------------
    manifest_file = Path(cfg.data.manifest)
    manifest = load_manifest(manifest_file)
    manifest_file = manifest_file / "manifest.csv" if manifest_file.is_dir() else manifest_file

    # -- model -------------------------------------------------------------------------
    torch.manual_seed(t.seed)  # the same initial mapper/LoRA on every rank
    random.seed(t.seed)
    np.random.seed(t.seed)
    model = ReportGenerator(cfg.model)
    enc = model.encoder
    ds_args = dict(image_size=cfg.model.encoder.image_size, mean=enc.mean, std=enc.std, seed=t.seed)
    train_ds = ReportDataset(manifest, "train", max_samples=cfg.data.max_train_samples, **ds_args)
    val_ds = ReportDataset(manifest, "validate", max_samples=cfg.data.max_eval_samples, **ds_args)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise ValueError(f"{manifest_file}: need studies in both the train and validate splits "
                         f"(found {len(train_ds)} and {len(val_ds)})")
    if model.aux_head is not None:  # a resumed run overwrites this with its checkpoint
        model.aux_head.init_prior(finding_targets(train_ds.labels))
    train_batcher = Batcher(train_ds, model, cfg.data.num_workers)
    val_batcher = Batcher(val_ds, model, cfg.data.num_workers)
    uses_frozen = t.strategy in ("frozen", "two_stage")
    if t.cache_features and uses_frozen:
        train_batcher.features = cached_features(model, cfg, train_ds, manifest_file, "train", accelerator)
        val_batcher.features = cached_features(model, cfg, val_ds, manifest_file, "validate", accelerator)

    # -- optimizer and schedule ----------------------------------------------------------
    world, rank = accelerator.num_processes, accelerator.process_index
    steps_per_epoch = math.ceil(len(epoch_batches(len(train_ds), cfg.data.batch_size, t.seed, 0, rank, world))
                                / t.grad_accum_steps)
    total_steps = steps_per_epoch * t.epochs
    switch_step = steps_per_epoch * (0 if t.strategy == "finetune" else t.stage1_epochs)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), weight_decay=t.weight_decay)
    schedule = GroupSchedule(optimizer, total_steps, t.schedule)

    state = {"epoch": 0, "batch": 0, "global_step": 0, "stage": stage_of(cfg, 0),
             "encoder_start_step": switch_step, "best": None, "best_epoch": None, "bad_epochs": 0}
    warmup_record = None
    if resume and ckpt is not None:
        state = load_checkpoint(ckpt, model, optimizer, cfg)
        accelerator.print(f"resuming {run_dir} from {ckpt.name}")
    else:
        if t.aux_warmup_steps > 0:
            feats = train_batcher.features
            if feats is None:  # finetune runs warm up from the (still frozen) encoder's features
                feats = cached_features(model, cfg, train_ds, manifest_file, "train", accelerator)
            tic = time.perf_counter()
            warm_loss = aux_warmup(model, feats, train_ds.labels, t.aux_warmup_steps, t.lr_mapper,
                                   cfg.data.batch_size, t.seed)
            warmup_record = {"kind": "aux_warmup", "steps": t.aux_warmup_steps, "aux_loss": warm_loss,
                             "seconds": time.perf_counter() - tic}
            accelerator.print(f"aux warm-up: {t.aux_warmup_steps} steps, finding loss {warm_loss:.3f}, "
                              f"{warmup_record['seconds']:.1f} s")
        if state["stage"] == 2:
            model.set_encoder_trainable(True)
            optimizer.add_param_group(encoder_group(model, cfg, switch_step))

    model.to(accelerator.device)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    log_file = run_dir / "metrics.jsonl"
    if t.log_with:
        accelerator.init_trackers(cfg.name)

    def log(record: dict[str, Any]) -> None:
        if main:
            with open(log_file, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        if t.log_with:
            accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))},
                            step=record.get("step"))

    if warmup_record is not None:
        log(warmup_record)
    throughput: dict[int, list[float]] = {1: [], 2: []}
    stop = False
    for epoch in range(state["epoch"], t.epochs):
        stage = stage_of(cfg, epoch)
        if stage == 2 and not model.encoder_trainable:  # the two-stage switch
            model.set_encoder_trainable(True)
            optimizer.optimizer.add_param_group(encoder_group(model, cfg, state["global_step"]))
            if world > 1:  # DDP must learn about the newly trainable parameters
                wrapped = accelerator.prepare_model(model)
            accelerator.print(f"epoch {epoch}: stage 2, encoder unfrozen (lr {t.lr_encoder:g})")
        state["stage"] = stage
        use_features = train_batcher.features is not None and stage == 1
        train_ds.set_epoch(epoch)
        batches = epoch_batches(len(train_ds), cfg.data.batch_size, t.seed, epoch, rank, world)
        start = state["batch"] if epoch == state["epoch"] else 0
        wrapped.train()
        bar = tqdm(total=len(batches), initial=start, desc=f"epoch {epoch} (stage {stage})",
                   disable=not main, dynamic_ncols=True)
        tic, seen, tokens = time.perf_counter(), 0, 0
        for i, batch in enumerate(train_batcher.batches(batches[start:], use_features), start=start):
            inputs = model_inputs(batch, accelerator.device)
            boundary = (i + 1) % t.grad_accum_steps == 0 or i == len(batches) - 1
            sync = contextlib.nullcontext() if boundary else accelerator.no_sync(wrapped)
            with sync:
                with accelerator.autocast():
                    out = wrapped(**inputs)
                accelerator.backward(out.loss / t.grad_accum_steps)
            seen += len(batch["reports"])
            tokens += int(inputs["report_attention_mask"].sum())
            if not boundary:
                continue
            schedule.apply(state["global_step"])
            if t.max_grad_norm:
                accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], t.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state["global_step"] += 1
            state["batch"] = i + 1
            state["epoch"] = epoch
            elapsed = time.perf_counter() - tic
            rate = seen * world / elapsed
            bar.update(i + 1 - bar.n)
            bar.set_postfix(loss=f"{out.loss.item():.3f}", sps=f"{rate:.2f}")
            if state["global_step"] % t.log_every_steps == 0:
                rec = {"kind": "step", "epoch": epoch, "stage": stage, "step": state["global_step"],
                       "loss": out.loss.item(), "lm_loss": out.lm_loss.item(), "samples_per_s": rate,
                       "tokens_per_s": tokens * world / elapsed,
                       **{f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups}}
                if out.aux_loss is not None:
                    rec["aux_loss"] = out.aux_loss.item()
                log(rec)
            if t.checkpoint_every_steps and state["global_step"] % t.checkpoint_every_steps == 0:
                accelerator.wait_for_everyone()
                if main:
                    save_checkpoint(run_dir, model, optimizer, state)
        bar.close()
        if seen:
            throughput[stage].append(seen * world / (time.perf_counter() - tic))

        # -- end of epoch: validation, best model, checkpoint -------------------------------
        accelerator.wait_for_everyone()
        decision = [None]
        if main:
            metrics = validate(model, val_batcher, cfg, accelerator, use_features=use_features)
            metrics.update(kind="epoch", epoch=epoch, stage=stage, step=state["global_step"],
                           train_samples_per_s=throughput[stage][-1] if seen else None)
            log(metrics)
            accelerator.print(f"epoch {epoch}: " + ", ".join(
                f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
            value = metrics[t.best_metric]
            better = state["best"] is None or (value < state["best"] if t.best_metric.endswith("loss")
                                               else value > state["best"])
            if better:
                state.update(best=value, best_epoch=epoch, bad_epochs=0)
                model.save_pretrained(run_dir / "best", run_config=cfg)
            else:
                state["bad_epochs"] += 1
            if on_epoch_end is not None:
                on_epoch_end(epoch, model, metrics)
            decision = [t.early_stopping_patience is not None and state["bad_epochs"] >= t.early_stopping_patience]
        if world > 1:
            broadcast_object_list(decision)
        state.update(epoch=epoch + 1, batch=0)
        if main:
            save_checkpoint(run_dir, model, optimizer, state)
        if decision[0]:
            accelerator.print(f"early stopping after epoch {epoch}")
            stop = True
            break

    # -- finish ----------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    if world > 1:
        (run_dir / f"weights_digest.rank{rank}.txt").write_text(state_digest(model))
    if main:
        model.save_pretrained(run_dir / "final", run_config=cfg)
        summary = {"run": cfg.name, "strategy": t.strategy, "epochs_run": state["epoch"], "early_stopped": stop,
                   "best_metric": t.best_metric, "best": state["best"], "best_epoch": state["best_epoch"],
                   "samples_per_s_stage1": float(np.mean(throughput[1])) if throughput[1] else None,
                   "samples_per_s_stage2": float(np.mean(throughput[2])) if throughput[2] else None,
                   "processes": world, "mixed_precision": t.mixed_precision, "config_hash": cfg.hash()}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if t.log_with:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return run_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train a report generator (frozen / finetune / two_stage).")
    parser.add_argument("--config", required=True, help="run config YAML (see configs/)")
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.epochs=1")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        train(cfg, resume=args.resume, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
