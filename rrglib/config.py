"""Run configuration: one dataclass tree, read from and written to YAML.

The YAML saved beside every result is the single source of truth for that result.
Defaults are the paper's choices where the paper states one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from rrglib.labels import CHEXPERT_OBSERVATIONS

@dataclass
class EncoderConfig:
    name: str = "resnet50"  # a key of rrglib.encoder.ENCODERS
    pretrained: bool = True  # ImageNet weights
    image_size: int = 224
    # BatchNorm running statistics stay at their ImageNet values even while the encoder is
    # fine-tuned: with 4-16 images per batch, batch statistics are too noisy to re-estimate.
    freeze_bn_stats: bool = True


@dataclass
class MapperConfig:
    num_prompts: int = 32  # K soft visual prompts
    d_model: int = 512
    num_heads: int = 8
    dim_feedforward: int = 2048
    dropout: float = 0.1
    max_tokens: int = 1024  # largest encoder token grid the positional embedding covers
    # "none" (the paper's mapper) or "batch": standardise every prompt dimension over the batch
    # (running statistics at inference), so the image-independent part of the prompts cannot
    # grow until it drowns the image-dependent part
    prompt_norm: str = "none"


@dataclass
class LLMConfig:
    # a key of rrglib.llm.LLMS ("tiny-gpt2", "tiny-llama", "smollm2-135m"), a hub id or a local dir
    name: str = "gpt2"
    attn_implementation: str = "sdpa"  # "eager" is needed for attention maps
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = None  # None: the architecture's default
    prompt: str = "Findings:"
    max_report_tokens: int = 128
    gradient_checkpointing: bool = False


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    mapper: MapperConfig = field(default_factory=MapperConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    # auxiliary finding loss on the pooled, normalised soft prompts (0 = the paper's method)
    aux_loss_weight: float = 0.0
    aux_labels: list[str] = field(default_factory=lambda: list(CHEXPERT_OBSERVATIONS))
    # how the head normalises the pooled prompts: "batch" standardises each dimension over the
    # batch (reads the image signal however small it is next to the image-independent part);
    # "layer" normalises each study's vector, so the head only sees what is large per study
    aux_norm: str = "batch"
    # replace every image by a constant: the image-blind control
    image_blind: bool = False


@dataclass
class DataConfig:
    manifest: str = ""  # path to manifest.csv; image paths are relative to its folder
    batch_size: int = 8
    eval_batch_size: int = 16
    num_workers: int = 0
    max_train_samples: int | None = None
    max_eval_samples: int | None = None


@dataclass
class TrainConfig:
    strategy: str = "two_stage"  # frozen | finetune | two_stage
    epochs: int = 3
    stage1_epochs: int = 1  # two_stage: epochs with the encoder frozen
    lr_encoder: float = 1e-5
    lr_mapper: float = 1e-4
    lr_lora: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    encoder_warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | linear | constant
    max_grad_norm: float = 1.0
    grad_accum_steps: int = 1
    mixed_precision: str = "no"  # no | bf16 | fp16
    seed: int = 42
    cache_features: bool = False  # reuse encoder features while the encoder is frozen
    # steps fitting mapper + finding head to the labels alone (frozen encoder, no LLM) before the
    # run starts; needs model.aux_loss_weight > 0. 0 = off (the paper's runs)
    aux_warmup_steps: int = 0
    feature_cache_dir: str | None = None
    eval_every_epoch: bool = True
    val_generation_samples: int = 32
    best_metric: str = "val_loss"  # val_loss | val_f1
    early_stopping_patience: int | None = None
    checkpoint_every_steps: int = 200
    log_every_steps: int = 10
    num_threads: int | None = None  # torch intra-op threads; None = torch default
    log_with: str | None = None  # an accelerate tracker, e.g. "tensorboard"


@dataclass
class GenerationConfig:
    max_new_tokens: int = 100
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs/run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    # -- YAML ---------------------------------------------------------------------------
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
        return _build(cls, data or {}, source, "")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> RunConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist (see configs/ for examples)")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a config must be a YAML mapping, got {type(data).__name__}")
        apply_overrides(data, overrides or [])
        return cls.from_dict(data, source=str(path))

    def hash(self) -> str:
        """Short stable hash of the whole configuration."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested dict in place."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def _build(cls: type, data: dict[str, Any], source: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{source}: section '{prefix or 'top'}' must be a mapping")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys here: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, source, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, f"{source}: {prefix}{name}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    # YAML 1.1 reads `1e-3` (no dot) as a string; accept it where the field is a float
    if isinstance(value, str) and float in getattr(hint, "__args__", (hint,)):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{where} must be a number, got {value!r}") from None
    return value


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a run config YAML, apply `section.key=value` overrides and validate it."""
    cfg = RunConfig.from_yaml(path, overrides)
    if cfg.train.strategy not in ("frozen", "finetune", "two_stage"):
        raise ValueError(
            f"{path}: train.strategy must be frozen, finetune or two_stage, got {cfg.train.strategy!r}"
        )
    return cfg
