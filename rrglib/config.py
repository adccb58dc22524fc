"""Run configuration: one dataclass tree, read from and written to YAML.

The YAML saved beside every result is its single source of truth; defaults are the paper's
choices. Every value is checked when the file is read, before any model is built: its type,
its range (`bounded` fields) and the few rules that tie two keys together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import operator
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_type_hints

import yaml

from rrglib.labels import CHEXPERT_OBSERVATIONS


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the file, the key and the fix."""


BOUNDS = {"ge": (">=", operator.ge), "gt": (">", operator.gt), "lt": ("<", operator.lt)}


def bounded(default: Any, **bounds: float) -> Any:
    """A dataclass field whose value must satisfy the given bounds (`ge=`, `gt=`, `lt=`)."""
    return field(default=default, metadata=bounds)


@dataclass
class EncoderConfig:
    name: str = "resnet50"  # a key of rrglib.encoder.ENCODERS
    pretrained: bool = True  # ImageNet weights
    image_size: int = bounded(224, ge=8)
    # BatchNorm running statistics stay at their ImageNet values even while the encoder is
    # fine-tuned: with 4-16 images per batch, batch statistics are too noisy to re-estimate.
    freeze_bn_stats: bool = True


@dataclass
class MapperConfig:
    num_prompts: int = bounded(32, ge=1)  # K soft visual prompts
    d_model: int = bounded(512, ge=1)
    num_heads: int = bounded(8, ge=1)
    dim_feedforward: int = bounded(2048, ge=1)
    dropout: float = bounded(0.1, ge=0.0, lt=1.0)
    max_tokens: int = bounded(1024, ge=1)  # largest encoder token grid the positional embedding covers
    # "batch": standardise each prompt dimension over the batch (running statistics at
    # inference), so the image-independent part cannot drown the image-dependent part;
    # "none": the paper's mapper
    prompt_norm: Literal["none", "batch"] = "none"


@dataclass
class LLMConfig:
    # a key of rrglib.assets.LLMS ("tiny-gpt2", "tiny-llama", "smollm2-135m"), a hub id or a local dir
    name: str = "gpt2"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"  # eager: attention maps
    lora_r: int = bounded(8, ge=1)
    lora_alpha: int = bounded(16, gt=0)
    lora_dropout: float = bounded(0.05, ge=0.0, lt=1.0)
    lora_target_modules: list[str] | None = None  # None: the architecture's default
    prompt: str = "Findings:"
    # the tokenizer's BOS token (GPT-2: <|endoftext|>) before the visual prompts, as LLaVA-style
    # inputs have: the first position is the attention sink, so it should not be a visual prompt
    # (measured on validation, README "Design choices"); False reproduces inputs without it
    bos: bool = True
    max_report_tokens: int = bounded(128, ge=2)
    gradient_checkpointing: bool = False


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    mapper: MapperConfig = field(default_factory=MapperConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    # auxiliary finding loss on the pooled, normalised soft prompts (0 = the paper's method)
    aux_loss_weight: float = bounded(0.0, ge=0.0)
    aux_labels: list[str] = field(default_factory=lambda: list(CHEXPERT_OBSERVATIONS))
    # "batch": the head standardises each pooled dimension over the batch (reads the image
    # signal however small next to the image-independent part); "layer": per study vector
    aux_norm: Literal["batch", "layer"] = "batch"
    # replace every image by a constant: the old image-blind control (see data.image_pairing)
    image_blind: bool = False


@dataclass
class DataConfig:
    manifest: str = ""  # path to manifest.csv; image paths are relative to its folder
    batch_size: int = bounded(8, ge=1)
    eval_batch_size: int = bounded(16, ge=1)
    num_workers: int = bounded(0, ge=0)
    max_train_samples: int | None = bounded(None, ge=1)
    max_eval_samples: int | None = bounded(None, ge=1)
    # the image each training report is shown with (validation: its own): "deranged" = another
    # study's by a fixed derangement per train.seed, the fair image-blind control (real image
    # statistics, no association); "constant" = one study's image for every report
    image_pairing: Literal["own", "deranged", "constant"] = "own"
    # training batches of similar report length (shuffled, then sorted within groups of 16
    # batches, batch order shuffled): far less padding, so fewer wasted FLOPs per step
    group_by_length: bool = False


@dataclass
class TrainConfig:
    strategy: Literal["frozen", "finetune", "two_stage"] = "two_stage"
    epochs: int = bounded(3, ge=1)
    stage1_epochs: int = bounded(1, ge=0)  # two_stage: epochs with the encoder frozen
    lr_encoder: float = bounded(1e-5, gt=0.0)
    lr_mapper: float = bounded(1e-4, gt=0.0)
    lr_lora: float = bounded(1e-4, gt=0.0)
    weight_decay: float = bounded(0.01, ge=0.0)
    warmup_steps: int = bounded(100, ge=0)
    encoder_warmup_steps: int = bounded(100, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float | None = bounded(1.0, ge=0.0)  # 0 or None: no clipping
    grad_accum_steps: int = bounded(1, ge=1)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # see rrglib.devices
    seed: int = bounded(42, ge=0)
    deterministic: bool = True  # CUDA: deterministic kernels, one seed gives one model (rrglib.devices)
    cache_features: bool = False  # reuse encoder features while the encoder is frozen
    # steps fitting mapper + finding head to the labels alone (frozen encoder, no LLM) before the
    # run starts; needs model.aux_loss_weight > 0. 0 = off (the paper's runs)
    aux_warmup_steps: int = bounded(0, ge=0)
    feature_cache_dir: str | None = None
    # greedy reports written per validation for val_f1 (0 = no val_f1)
    val_generation_samples: int = bounded(32, ge=0)
    best_metric: Literal["val_loss", "val_f1"] = "val_loss"
    early_stopping_patience: int | None = bounded(None, ge=1)
    checkpoint_every_steps: int = bounded(200, ge=0)  # 0: only at the end of each epoch
    log_every_steps: int = bounded(10, ge=1)
    num_threads: int | None = bounded(None, ge=1)  # torch intra-op threads; None = torch default
    log_with: str | None = None  # an accelerate tracker, e.g. "tensorboard"


@dataclass
class GenerationConfig:
    max_new_tokens: int = bounded(100, ge=1)
    num_beams: int = bounded(1, ge=1)
    do_sample: bool = False
    temperature: float = bounded(1.0, gt=0.0)  # used only when do_sample
    repetition_penalty: float = bounded(1.0, gt=0.0)
    no_repeat_ngram_size: int = bounded(0, ge=0)


# val_f1 from fewer greedy reports is mostly noise (0.0 for every 8-report demo validation)
MIN_VAL_F1_SAMPLES = 32


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs/run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> RunConfig:
        return check_rules(config_from_dict(cls, data or {}, source), source)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> RunConfig:
        data = apply_overrides(read_yaml(path), overrides or [], str(path))
        return cls.from_dict(data, source=str(path))

    def hash(self) -> str:
        """Short stable hash of the whole configuration."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file as a dict; a missing, empty or malformed file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist (see configs/ for examples)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{path}: YAML syntax error{where} ({problem}); fix the file") from None
    if data is None:  # 0 bytes, blanks or comments only
        raise ConfigError(f"{path} is empty; a run config is a YAML mapping (copy configs/smoke.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping of sections, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str = "<overrides>") -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested dict in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        node, parts = data, key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if node is None:
                node = data[part] = {}
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: the value is not valid YAML; quote it") from None
    return data


def config_from_dict(cls: type, data: dict[str, Any], source: str, prefix: str = "") -> Any:
    """Build the dataclass `cls` from a nested dict, checking keys, types and ranges."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: section '{prefix.rstrip('.') or 'top'}' must be a mapping")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    data = {k: v for k, v in data.items() if RETIRED.get(prefix + k, _ABSENT) != v}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
                          f"valid keys here: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        hint, key = hints[name], f"{prefix}{name}"
        if dataclasses.is_dataclass(hint):
            kwargs[name] = config_from_dict(hint, value or {}, source, f"{key}.")
        else:
            kwargs[name] = _check_range(_coerce(value, hint, source, key), fields[name].metadata, source, key)
    return cls(**kwargs)


# Removed keys that never had an effect: configs saved before their removal still load as long
# as they hold the old default; any other value is an unknown key.
_ABSENT = object()
RETIRED: dict[str, Any] = {"train.eval_every_epoch": True}
# What a scalar field accepts, and how an error says it (bool is an int to Python, not to us).
SCALARS = {bool: ((bool,), "true or false"), int: ((int,), "a whole number"),
           float: ((int, float), "a number"), str: ((str,), "a string (quote it)")}


def _coerce(value: Any, hint: Any, source: str, key: str) -> Any:
    """`value` as the type `hint` names, or a ConfigError naming the key and what it accepts."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # `X | None`
        inner = [a for a in args if a is not type(None)][0]
        return None if value is None else _coerce(value, inner, source, key)
    if origin is Literal:
        ok, wanted = value in args, f"one of {', '.join(map(str, args))}"
    elif origin is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        wanted = "a list of strings, e.g. [a, b]"
    else:
        if hint is float and isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        accepted, wanted = SCALARS[hint]
        ok = isinstance(value, accepted) and (hint is bool or not isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{source}: {key} must be {wanted}; got {value!r}")
    return float(value) if hint is float else value


def _check_range(value: Any, bounds: Any, source: str, key: str) -> Any:
    if value is not None and not all(BOUNDS[k][1](value, b) for k, b in bounds.items()):
        wanted = " and ".join(f"{BOUNDS[k][0]} {b}" for k, b in bounds.items())
        raise ConfigError(f"{source}: {key} must be {wanted}; got {value!r}")
    return value


def check_rules(cfg: RunConfig, source: str) -> RunConfig:
    """The rules that tie two keys together; returns `cfg`."""
    t = cfg.train
    if t.aux_warmup_steps > 0 and cfg.model.aux_loss_weight <= 0:
        raise ConfigError(f"{source}: train.aux_warmup_steps needs model.aux_loss_weight > 0 "
                          "(there is no finding head to warm up); set one of them")
    if t.best_metric == "val_f1" and t.val_generation_samples < MIN_VAL_F1_SAMPLES:
        raise ConfigError(f"{source}: train.best_metric val_f1 needs train.val_generation_samples >= "
                          f"{MIN_VAL_F1_SAMPLES} (got {t.val_generation_samples}); F1 over fewer reports is noise")
    if t.strategy == "two_stage" and t.stage1_epochs >= t.epochs:
        raise ConfigError(f"{source}: train.stage1_epochs ({t.stage1_epochs}) must be below train.epochs "
                          f"({t.epochs}) for two_stage, or the encoder is never unfrozen; use strategy frozen")
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a run config YAML, apply `section.key=value` overrides and validate it."""
    return RunConfig.from_yaml(path, overrides)
