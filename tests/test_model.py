"""Model core: encoders, mapper, LLM loading, ReportGenerator loss/generate/save/load."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from rrglib import assets
from rrglib import llm as llm_mod
from rrglib.config import EncoderConfig, LLMConfig, MapperConfig, RunConfig, load_config
from rrglib.encoder import build_encoder
from rrglib.mapper import Mapper
from rrglib.model import IGNORE_INDEX, Generation, ReportGenerator

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ["The heart size is normal.", "Small left pleural effusion. No pneumothorax is seen here."]


def smoke_model_config(llm: str = "tiny-gpt2", **overrides):
    cfg = load_config(ROOT / "configs" / "smoke.yaml").model
    cfg.llm.name = llm
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture(params=["tiny-gpt2", "tiny-llama"])
def model(request) -> ReportGenerator:
    torch.manual_seed(0)
    return ReportGenerator(smoke_model_config(request.param))


def images(b: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name,size,tokens,channels", [
    ("tiny-cnn", 64, 64, 32),
    ("resnet50", 64, 4, 2048),
    ("efficientnet-lite0", 224, 49, 1280),
])
def test_encoder_returns_spatial_tokens(name, size, tokens, channels):
    enc = build_encoder(EncoderConfig(name=name, pretrained=name == "efficientnet-lite0", image_size=size))
    out = enc.eval()(torch.randn(1, 3, size, size))
    assert out.shape == (1, tokens, channels)
    assert enc.out_channels == channels and len(enc.mean) == 3 and len(enc.std) == 3


def test_efficientnet_lite0_loads_imagenet_weights_offline(capsys):
    pretrained = build_encoder(EncoderConfig(name="efficientnet-lite0", pretrained=True))
    assert "Loaded pretrained weights" not in capsys.readouterr().out  # no noise in notebooks
    random = build_encoder(EncoderConfig(name="efficientnet-lite0", pretrained=False))
    w_pre = pretrained.backbone._conv_stem.weight
    w_rand = random.backbone._conv_stem.weight
    assert not torch.allclose(w_pre, w_rand)


def test_unknown_encoder_names_the_choices():
    with pytest.raises(ValueError, match="tiny-cnn"):
        build_encoder(EncoderConfig(name="vit-huge"))


def test_mapper_emits_k_prompts_in_llm_width():
    m = Mapper(in_dim=48, out_dim=80, cfg=MapperConfig(num_prompts=5, d_model=32, num_heads=4, max_tokens=16))
    assert m(torch.randn(3, 16, 48)).shape == (3, 5, 80)
    with pytest.raises(ValueError, match="max_tokens"):
        m(torch.randn(1, 17, 48))


def test_mapper_output_depends_on_token_positions():
    torch.manual_seed(0)
    m = Mapper(8, 8, MapperConfig(num_prompts=2, d_model=8, num_heads=2, dropout=0.0)).eval()
    x = torch.randn(1, 6, 8)
    # without positional embeddings, cross-attention would be blind to a permutation of tokens
    assert not torch.allclose(m(x), m(x.flip(1)))


def test_prompt_and_visual_positions_never_carry_loss(model):
    tok = model.tokenize_reports(REPORTS)
    prompts = model.visual_prompts(images())
    _, attention, labels = model.build_inputs(prompts, tok["input_ids"], tok["attention_mask"])
    prefix = model.num_prefix_tokens
    assert prefix == 1 + 4 + model.prompt_ids.numel()  # BOS, K = 4 prompts, the prompt text
    assert (labels[:, :prefix] == IGNORE_INDEX).all()
    # report tokens and the final eos are labelled, padding is not
    for i in range(len(REPORTS)):
        n = int(tok["attention_mask"][i].sum())
        assert (labels[i, prefix:prefix + n] == tok["input_ids"][i, :n]).all()
        assert labels[i, prefix + n - 1] == model.tokenizer.eos_token_id
        assert (labels[i, prefix + n:] == IGNORE_INDEX).all()
    assert attention.shape == labels.shape


def test_loss_equals_cross_entropy_over_report_tokens_only(model):
    model.eval()
    tok = model.tokenize_reports(REPORTS)
    x = images()
    out = model(tok["input_ids"], tok["attention_mask"], images=x, return_logits=True)
    prefix = model.num_prefix_tokens
    total, count = 0.0, 0
    for i in range(len(REPORTS)):
        n = int(tok["attention_mask"][i].sum())
        # logits at position t predict token t+1: the last prefix position predicts report token 0
        logits = out.logits[i, prefix - 1: prefix + n - 1]
        total += F.cross_entropy(logits, tok["input_ids"][i, :n], reduction="sum").item()
        count += n
    assert out.loss.item() == pytest.approx(total / count, rel=1e-5)


def test_padding_token_values_do_not_change_the_loss(model):
    model.eval()
    tok = model.tokenize_reports(REPORTS)
    ids = tok["input_ids"].clone()
    base = model(ids, tok["attention_mask"], images=images()).loss
    ids[tok["attention_mask"] == 0] = 7  # garbage where the mask says padding
    assert model(ids, tok["attention_mask"], images=images()).loss.item() == pytest.approx(base.item(), rel=1e-6)


def test_overlong_reports_are_cut_without_eos_and_counted(model):
    model.cfg.llm.max_report_tokens = 6
    eos = model.tokenizer.eos_token_id
    reports = ["word " * 50, "The heart size is normal."]
    n_short = len(model.tokenizer(reports[1], add_special_tokens=False)["input_ids"])
    model.cfg.llm.max_report_tokens = n_short + 1  # the short one fits exactly, with its eos
    tok = model.tokenize_reports(reports)
    width = n_short + 1
    assert tok["input_ids"].shape[1] == width
    # the cut report must not teach the model to stop mid-report: no eos, all positions text
    assert tok["truncated"].tolist() == [True, False]
    assert eos not in tok["input_ids"][0].tolist() and tok["attention_mask"][0].sum() == width
    assert tok["input_ids"][1, n_short] == eos
    # one token shorter and the short report loses its eos too (it no longer fits whole)
    model.cfg.llm.max_report_tokens = n_short
    assert model.tokenize_reports(reports)["truncated"].tolist() == [True, True]


def test_generation_returns_one_result_type(model):
    model.eval()
    out = model.generate(images=images(3), max_new_tokens=6)
    assert isinstance(out, Generation) and len(out) == 3 and out.attentions is None
    assert all(isinstance(t, str) for t in out.texts)
    assert all(0 < len(lp) <= 6 and all(v <= 0 for v in lp) for lp in out.logprobs)
    assert [len(t) for t in out.token_ids] == [len(lp) for lp in out.logprobs]
    # the ids decode to the texts
    decoded = [model.tokenizer.decode(t, skip_special_tokens=True).strip() for t in out.token_ids]
    assert decoded == out.texts
    beams = model.generate(images=images(2), max_new_tokens=6, num_beams=2)
    assert isinstance(beams, Generation) and len(beams) == 2


def test_sampling_temperature_is_applied(model):
    model.eval()
    greedy = model.generate(images=images(2), max_new_tokens=6)
    torch.manual_seed(3)
    # a near-zero temperature makes sampling pick the most likely token: greedy's reports
    cold = model.generate(images=images(2), max_new_tokens=6, do_sample=True, temperature=1e-4)
    assert cold.token_ids == greedy.token_ids
    # the log-probs are those of the tempered distribution: near 0 when cold
    assert all(v > -1e-3 for lp in cold.logprobs for v in lp)
    torch.manual_seed(3)
    hot = model.generate(images=images(2), max_new_tokens=6, do_sample=True, temperature=50.0)
    assert hot.token_ids != greedy.token_ids  # a flat distribution over 512 tokens


@pytest.mark.parametrize("kwargs,match", [
    ({"num_beams": 0}, "num_beams must be at least 1"),
    ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
    ({"do_sample": True, "temperature": 0.0}, "temperature must be > 0"),
    ({"temperature": 0.7}, "do_sample"),
])
def test_bad_decoding_settings_are_refused(kwargs, match):
    model = ReportGenerator(smoke_model_config()).eval()
    with pytest.raises(ValueError, match=match):
        model.generate(images=images(1), **kwargs)


def _perturb(model: ReportGenerator) -> None:
    # LoRA's B starts at zero (a no-op adapter); make every trainable tensor non-trivial
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or name.startswith(("mapper", "aux_head")):
                p.add_(torch.randn_like(p) * 0.05)


@pytest.mark.parametrize("llm", ["tiny-gpt2", "tiny-llama"])
def test_save_load_gives_identical_logits(tmp_path, llm):
    torch.manual_seed(0)
    model = ReportGenerator(smoke_model_config(llm, aux_loss_weight=1.0))
    _perturb(model)
    model.eval()
    model.aux_head.norm.running_mean.add_(0.3)
    model.save_pretrained(tmp_path / "run")
    assert not list((tmp_path / "run").rglob("*.bin")) and not list((tmp_path / "run").rglob("*.pt"))
    loaded = ReportGenerator.from_pretrained(tmp_path / "run").eval()
    tok = model.tokenize_reports(REPORTS)
    a = model(tok["input_ids"], tok["attention_mask"], images=images(), return_logits=True)
    b = loaded(tok["input_ids"], tok["attention_mask"], images=images(), return_logits=True)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.aux_logits, b.aux_logits)
    a_gen, b_gen = model.generate(images=images(), max_new_tokens=5), loaded.generate(images=images(), max_new_tokens=5)
    assert a_gen.texts == b_gen.texts and a_gen.token_ids == b_gen.token_ids


def test_lora_and_mapper_changes_survive_reload_and_matter(tmp_path):
    torch.manual_seed(0)
    model = ReportGenerator(smoke_model_config()).eval()
    tok = model.tokenize_reports(REPORTS)
    before = model(tok["input_ids"], tok["attention_mask"], images=images(), return_logits=True).logits
    _perturb(model)
    model.save_pretrained(tmp_path / "run")
    fresh = ReportGenerator(smoke_model_config()).eval()
    loaded = ReportGenerator.from_pretrained(tmp_path / "run").eval()
    after = loaded(tok["input_ids"], tok["attention_mask"], images=images(), return_logits=True).logits
    assert not torch.allclose(before, after)
    # the reloaded base LLM is the same random tiny model (built with a fixed seed)
    sd_fresh = {k: v for k, v in fresh.llm.state_dict().items() if "lora_" not in k}
    sd_loaded = {k: v for k, v in loaded.llm.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(sd_fresh[k], sd_loaded[k]) for k in sd_fresh)


def test_frozen_encoder_trainable_counts_match_hand_computation():
    model = ReportGenerator(smoke_model_config("tiny-gpt2"))
    # mapper (in 32 -> d 32 -> out 64, K=4, ff 64, 256 positions):
    #   input_proj 32*32+32=1056, input_norm 64, pos 256*32=8192, queries 4*32=128,
    #   self+cross attention 2*(3*32*32+3*32 + 32*32+32)=8448, ffn 32*64+64 + 64*32+32=4192,
    #   3 decoder norms 3*64=192, final norm 64, output_proj 32*64+64=2112  -> 24448
    # LoRA r=4 on c_attn (64 -> 192) in 2 layers: 2*(4*64 + 192*4) = 2048
    assert model.trainable_parameter_counts() == {"encoder": 0, "mapper": 24448, "lora": 2048}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith("mapper.") or "lora_" in n for n in trainable)
    llama = ReportGenerator(smoke_model_config("tiny-llama"))
    # LoRA r=4 on q_proj (64->64) and v_proj (64->32, 2 kv heads of 16): 2*(4*64+64*4 + 4*64+32*4)
    assert llama.trainable_parameter_counts()["lora"] == 1792


def test_unfreezing_the_encoder_makes_it_trainable_with_fixed_bn_stats():
    model = ReportGenerator(smoke_model_config())
    n_enc = sum(p.numel() for p in model.encoder.parameters())
    model.set_encoder_trainable(True)
    assert model.trainable_parameter_counts()["encoder"] == n_enc
    model.train()
    bn = next(m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    stats = bn.running_mean.clone()
    tok = model.tokenize_reports(REPORTS)
    model(tok["input_ids"], tok["attention_mask"], images=images()).loss.backward()
    assert torch.equal(bn.running_mean, stats)  # freeze_bn_stats: ImageNet statistics kept
    assert bn.weight.grad is not None  # ... while the affine parameters still learn
    model.set_encoder_trainable(False)
    assert not model.encoder.training


def test_image_blind_model_ignores_the_image():
    model = ReportGenerator(smoke_model_config(image_blind=True)).eval()
    a = model.visual_prompts(images(1))
    b = model.visual_prompts(-images(1))
    assert torch.equal(a, b)


def test_aux_head_loss_is_added_with_its_weight():
    model = ReportGenerator(smoke_model_config(aux_loss_weight=0.5)).eval()
    tok = model.tokenize_reports(REPORTS)
    labels = torch.full((2, 14), float("nan"))
    labels[0, 2] = 1.0
    labels[1, 10] = -1.0
    out = model(tok["input_ids"], tok["attention_mask"], images=images(), labels=labels)
    assert out.aux_logits.shape == (2, 14)
    assert out.loss.item() == pytest.approx(out.lm_loss.item() + 0.5 * out.aux_loss.item(), rel=1e-6)


def test_config_yaml_roundtrip_and_errors(tmp_path):
    cfg = load_config(ROOT / "configs" / "smoke.yaml", ["train.lr_mapper=0.5", "model.llm.lora_r=2"])
    assert cfg.train.lr_mapper == 0.5 and cfg.model.llm.lora_r == 2
    cfg.to_yaml(tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg and again.hash() == cfg.hash()
    (tmp_path / "bad.yaml").write_text("model:\n  encoder:\n    nmae: x\n")
    with pytest.raises(ValueError, match="model.encoder.nmae"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(FileNotFoundError, match="configs/"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="strategy"):
        load_config(ROOT / "configs" / "smoke.yaml", ["train.strategy=partial"])


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(path):
    if path.name.startswith("study_"):
        from study_runner.study import load_spec, plan

        spec = load_spec(path)
        assert plan(spec) and all(load_config(ROOT / (r.config or spec.parameters["base_config"]))
                                  for r in spec.runs)
    elif path.name == "paper_reported.yaml":
        import yaml

        assert {"source", "setup", "results", "claims"} <= set(yaml.safe_load(path.read_text()))
    else:
        assert isinstance(load_config(path), RunConfig)


def test_smollm2_fetch_failure_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("RRG_CACHE", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "no index"))
    with pytest.raises(RuntimeError, match="SmolLM2-135M-Instruct.Q4_1.gguf"):
        assets.fetch_smollm2()


def test_unknown_hub_model_offline_gives_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # read once at import: without this the hub client retries the network for ~45 s first
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="local-dir"):
        llm_mod.load_llm(LLMConfig(name="no-such-org/no-such-model"))


def _smollm2_available() -> bool:
    base = assets.cache_dir() / "smollm2-135m"
    return (base / "hf" / "model.safetensors").is_file() or (base / assets.SMOLLM2_GGUF).is_file()


@pytest.mark.skipif(not _smollm2_available(), reason="SmolLM2 not in the cache: run `make assets` (needs the package index once)")
def test_packaged_smollm2_loads_with_llama_lora_and_chat_eos():
    model, tok = llm_mod.load_llm(LLMConfig(name="smollm2-135m"))
    assert model.config.model_type == "llama" and model.config.hidden_size == 576
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None
    assert llm_mod.lora_targets(model, LLMConfig(name="smollm2-135m")) == ["q_proj", "v_proj"]
    def nll(text: str) -> float:
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            return model(ids, labels=ids).loss.item()

    # a trained LM, not random weights: fluent text is far likelier than the same words shuffled
    assert nll("The heart size is normal and the lungs are clear.") + 1.0 < nll(
        "normal lungs The clear and size heart the are is."
    )


def _with_prompt_norm(llm: str = "tiny-llama", **overrides):
    cfg = smoke_model_config(llm, **overrides)
    cfg.mapper.prompt_norm = "batch"
    return cfg


def test_finding_head_bias_starts_at_the_prevalence_log_odds():
    model = ReportGenerator(smoke_model_config(aux_loss_weight=1.0))
    targets = torch.zeros(10, 14)
    targets[:5, 0] = 1  # 50%
    targets[:1, 2] = 1  # 10%; the other labels never occur and are clamped
    model.aux_head.init_prior(targets)
    bias = model.aux_head.linear.bias
    assert bias[0].item() == pytest.approx(0.0, abs=1e-6)
    assert bias[2].item() == pytest.approx(torch.log(torch.tensor(0.1 / 0.9)).item(), rel=1e-5)
    assert bias[5].item() == pytest.approx(torch.log(torch.tensor(1e-3 / (1 - 1e-3))).item(), rel=1e-5)


def test_batch_prompt_norm_removes_the_image_independent_part():
    torch.manual_seed(0)
    model = ReportGenerator(_with_prompt_norm())
    emb = model.llm.get_input_embeddings().weight.detach().float()
    rms = emb.pow(2).mean().sqrt().item()
    assert model.mapper.prompt_norm.weight.detach().allclose(torch.full_like(model.mapper.prompt_norm.weight, rms))
    model.train()
    x = images(6)
    p = model.visual_prompts(x)
    assert p.mean(0).abs().max().item() < 1e-4  # every (prompt, dim) centred over the batch
    std = p.std(0, unbiased=False)  # scaled to the embeddings' RMS (BatchNorm's eps only shrinks it)
    assert std.max().item() <= rms * 1.001 and std.mean().item() > 0.8 * rms
    with torch.no_grad():  # a huge constant added before the norm changes nothing
        model.mapper.output_proj.bias.add_(100.0)
    assert torch.allclose(model.visual_prompts(x), p, atol=1e-3)


def test_batch_prompt_norm_statistics_survive_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = ReportGenerator(_with_prompt_norm())
    model.train()
    for _ in range(3):  # move the running statistics off their initial values
        model.visual_prompts(images(4))
    model.eval()
    model.save_pretrained(tmp_path / "run")
    loaded = ReportGenerator.from_pretrained(tmp_path / "run").eval()
    assert loaded.mapper.prompt_norm is not None
    assert torch.equal(model.visual_prompts(images(2)), loaded.visual_prompts(images(2)))


def test_unknown_normalisation_choices_are_named():
    cfg = smoke_model_config(aux_loss_weight=1.0)
    cfg.mapper.prompt_norm = "group"
    with pytest.raises(ValueError, match="prompt_norm"):
        ReportGenerator(cfg)
    cfg = smoke_model_config(aux_loss_weight=1.0, aux_norm="instance")
    with pytest.raises(ValueError, match="aux_norm"):
        ReportGenerator(cfg)


def test_finding_targets_follow_the_evaluation_convention():
    import numpy as np
    import pandas as pd

    from rrglib.labels import CHEXPERT_OBSERVATIONS
    from rrglib.metrics.clinical import binarize
    from rrglib.model import finding_targets
    values = np.array([[1.0, 0.0, -1.0, np.nan] * 4][0][:14]).reshape(1, 14).repeat(3, 0)
    values[1] = np.roll(values[1], 1)
    values[2] = np.nan
    frame = pd.DataFrame(values, columns=list(CHEXPERT_OBSERVATIONS))
    assert np.array_equal(finding_targets(torch.tensor(values)).numpy().astype(bool), binarize(frame))


def test_bos_before_the_visual_prompts():
    torch.manual_seed(0)
    cfg = smoke_model_config()
    cfg.llm.bos = False
    plain = ReportGenerator(cfg)
    cfg = smoke_model_config()
    assert cfg.llm.bos  # the default
    torch.manual_seed(0)
    with_bos = ReportGenerator(cfg)
    k = cfg.mapper.num_prompts
    assert with_bos.num_prefix_tokens == plain.num_prefix_tokens + 1
    assert plain.prompt_positions == slice(0, k) and with_bos.prompt_positions == slice(1, k + 1)
    prompts = torch.randn(2, k, with_bos.llm.config.hidden_size)
    prefix = with_bos.prefix_embeds(prompts)
    bos = with_bos.llm.get_input_embeddings()(torch.tensor([with_bos.tokenizer.bos_token_id]))[0]
    torch.testing.assert_close(prefix[:, 0], bos.expand(2, -1))
    torch.testing.assert_close(prefix[:, 1:k + 1], prompts)
    torch.testing.assert_close(prefix[:, 1:], plain.prefix_embeds(prompts))
    tok = with_bos.tokenize_reports(REPORTS)
    _, mask, labels = with_bos.build_inputs(prompts, tok["input_ids"], tok["attention_mask"])
    assert (labels[:, :with_bos.num_prefix_tokens] == -100).all() and mask.shape == labels.shape


def test_a_model_saved_before_the_bos_setting_loads_without_bos(tmp_path):
    torch.manual_seed(0)
    cfg = smoke_model_config()
    cfg.llm.bos = False
    model = ReportGenerator(cfg)
    model.save_pretrained(tmp_path / "m")
    saved = yaml.safe_load((tmp_path / "m" / "model_config.yaml").read_text())
    del saved["llm"]["bos"]
    (tmp_path / "m" / "model_config.yaml").write_text(yaml.safe_dump(saved))
    loaded = ReportGenerator.from_pretrained(tmp_path / "m")
    assert loaded.cfg.llm.bos is False and loaded.prompt_positions == slice(0, cfg.mapper.num_prompts)
