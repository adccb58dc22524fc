"""Run configs: every value typed and checked when the file is read, before any model exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from rrglib.config import ConfigError, RunConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")
                                        if not p.name.startswith(("study_", "paper_reported"))))
def test_every_shipped_profile_loads(name):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.train.strategy in ("frozen", "finetune", "two_stage")


@pytest.mark.parametrize("override, key, hint", [
    ("train.epochs=two", "train.epochs", "whole number"),
    ("train.epochs=0", "train.epochs", ">= 1"),
    ("data.batch_size=0", "data.batch_size", ">= 1"),
    ("train.lr_mapper=-1e-3", "train.lr_mapper", "> 0"),
    ("train.lr_encoder=0", "train.lr_encoder", "> 0"),
    ("model.mapper.dropout=1.0", "model.mapper.dropout", "< 1.0"),
    ("model.llm.lora_dropout=-0.1", "model.llm.lora_dropout", ">= 0.0"),
    ("train.best_metric=val_f2", "train.best_metric", "val_loss, val_f1"),
    ("train.strategy=two-stage", "train.strategy", "frozen, finetune, two_stage"),
    ("model.mapper.prompt_norm=layer", "model.mapper.prompt_norm", "none, batch"),
    ("train.schedule=step", "train.schedule", "cosine, linear, constant"),
    ("train.mixed_precision=fp8", "train.mixed_precision", "no, bf16, fp16"),
    ("train.cache_features=yes please", "train.cache_features", "true or false"),
    ("data.image_pairing=shuffled", "data.image_pairing", "own, deranged, constant"),
    ("generation.num_beams=0", "generation.num_beams", ">= 1"),
    ("model.llm.lora_target_modules=q_proj", "model.llm.lora_target_modules", "list of strings"),
    ("output_dir=3", "output_dir", "string"),
    ("train.seed=1.5", "train.seed", "whole number"),
])
def test_bad_values_are_refused_naming_file_key_and_what_is_allowed(override, key, hint):
    with pytest.raises(ConfigError) as err:
        load_config(SMOKE, [override])
    msg = str(err.value)
    assert "\n" not in msg
    assert str(SMOKE) in msg and key in msg and hint in msg, msg


def test_numbers_written_without_a_dot_are_numbers():
    cfg = load_config(SMOKE, ["train.lr_mapper=1e-3", "train.weight_decay=0"])
    assert cfg.train.lr_mapper == 1e-3 and isinstance(cfg.train.weight_decay, float)


def test_optional_values_accept_null():
    cfg = load_config(SMOKE, ["train.early_stopping_patience=null", "data.max_train_samples=~"])
    assert cfg.train.early_stopping_patience is None and cfg.data.max_train_samples is None


def test_rules_that_tie_two_keys_together():
    with pytest.raises(ConfigError, match="aux_loss_weight"):
        load_config(SMOKE, ["train.aux_warmup_steps=5"])
    with pytest.raises(ConfigError, match="val_generation_samples >= 32"):
        load_config(SMOKE, ["train.best_metric=val_f1", "train.val_generation_samples=8"])
    with pytest.raises(ConfigError, match="stage1_epochs"):
        load_config(SMOKE, ["train.epochs=1"])  # two_stage that never unfreezes: a frozen run in disguise
    assert load_config(SMOKE, ["train.epochs=1", "train.strategy=frozen"]).train.epochs == 1


def test_unknown_keys_list_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) train.lr;.*lr_mapper"):
        load_config(SMOKE, ["train.lr=0.1"])


def test_removed_options_load_from_old_saved_configs_but_not_with_new_values(tmp_path):
    cfg = load_config(SMOKE)
    data = cfg.to_dict()
    data["train"]["eval_every_epoch"] = True  # written by every run before the option was removed
    assert RunConfig.from_dict(data) == cfg
    data["train"]["eval_every_epoch"] = False
    with pytest.raises(ConfigError, match="eval_every_epoch"):
        RunConfig.from_dict(data)


@pytest.mark.parametrize("text, expected", [
    ("", "is empty"),
    ("   \n# only a comment\n", "is empty"),
    ("train: {epochs: 2\n", "YAML syntax error at line"),
    ("train:\n  epochs: 2\n    lr: 3\n", "YAML syntax error at line"),
    ("- a\n- b\n", "must be a YAML mapping"),
    ("train: 3\n", "section 'train' must be a mapping"),
])
def test_broken_files_give_one_line_naming_the_file(tmp_path, text, expected):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and expected in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_and_bad_override_syntax():
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config("nope.yaml")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(SMOKE, ["train.epochs"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(SMOKE, ["train.epochs=[1"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(SMOKE, ["data.image_pairing=deranged"])
    cfg.to_yaml(tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg and again.hash() == cfg.hash()
