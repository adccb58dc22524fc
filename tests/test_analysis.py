"""Analyses: prompt attention share, calibration (token, temperature, finding), grounding inputs."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from rrglib import analysis as A  # noqa: E402
from rrglib.config import load_config  # noqa: E402
from rrglib.evaluate import blank_like  # noqa: E402
from rrglib.model import ReportGenerator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def smoke_model(attn: str = "eager", llm: str = "tiny-gpt2") -> ReportGenerator:
    cfg = load_config(ROOT / "configs" / "smoke.yaml").model
    cfg.llm.name, cfg.llm.attn_implementation = llm, attn
    torch.manual_seed(0)
    return ReportGenerator(cfg).eval()


# -- attention share --------------------------------------------------------------------------
def test_all_mass_on_prompts_gives_share_one():
    w = torch.zeros(2, 3, 1, 10)
    w[..., :4] = 0.25
    share, norm = A.prompt_attention_share([w, w], num_prompts=4)
    assert share.shape == (2, 2, 3, 1)
    np.testing.assert_allclose(share, 1.0)
    np.testing.assert_allclose(norm, 10 / 4)  # expected share 4/10


def test_uniform_attention_gives_normalised_share_one_and_causal_positions():
    # prefill: 6 queries over 6 positions, causal uniform attention; K = 2
    q = length = 6
    w = torch.tril(torch.ones(q, length))
    w = (w / w.sum(-1, keepdim=True)).expand(1, 2, q, length)
    share, norm = A.prompt_attention_share([w], num_prompts=2)
    # query at position i sees i + 1 positions, min(2, i + 1) of them prompts
    expected = [min(2, i + 1) / (i + 1) for i in range(q)]
    np.testing.assert_allclose(share[0, 0, 0], expected)
    np.testing.assert_allclose(norm, 1.0)


def test_padding_is_masked_out_of_the_expected_share():
    # sample 1 has two padded positions (3 and 4, e.g. finished rows); uniform over the rest
    mask = torch.tensor([[1] * 8, [1, 1, 1, 0, 0, 1, 1, 1]])
    w = mask[:, None, None, :].float().expand(2, 1, 1, 8)
    w = w / w.sum(-1, keepdim=True)
    share, norm = A.prompt_attention_share([w], num_prompts=2, attention_mask=mask)
    np.testing.assert_allclose(share[0, :, 0, 0], [2 / 8, 2 / 6])
    np.testing.assert_allclose(norm, 1.0)
    # a padded *prompt* position shrinks the expectation too: K = 3 with position 1 padded
    mask2 = torch.tensor([[1, 0, 1, 1]])
    w2 = torch.tensor([[[[0.5, 0.0, 0.5, 0.0]]]])
    share2, norm2 = A.prompt_attention_share([w2], num_prompts=3, attention_mask=mask2)
    assert share2.item() == pytest.approx(1.0)
    assert norm2.item() == pytest.approx(1.0 / (2 / 3))


def test_head_spread_and_generation_steps():
    # step 0 = prefill (q = 3 over 3), step 1 = one query over 4 positions; 2 heads differ
    k = 1
    step0 = torch.zeros(1, 2, 3, 3)
    step0[0, 0, -1] = torch.tensor([1.0, 0.0, 0.0])  # head 0: all on the prompt
    step0[0, 1, -1] = torch.tensor([0.0, 0.5, 0.5])  # head 1: none
    step1 = torch.full((1, 2, 1, 4), 0.25)
    share, norm = A.generation_prompt_share([(step0,), (step1,)], num_prompts=k)
    assert share.shape == (2, 1, 1, 2)  # (steps, layers, B, H)
    np.testing.assert_allclose(share[0, 0, 0], [1.0, 0.0])
    np.testing.assert_allclose(norm[1, 0, 0], [1.0, 1.0])
    spread = A.head_spread(share[0])
    assert spread["mean"].item() == 0.5 and spread["std"].item() == 0.5
    assert spread["min"].item() == 0.0 and spread["max"].item() == 1.0
    frame = A.attention_frame(share, norm, valid=np.array([[True], [False]]))
    assert len(frame) == 2 and set(frame["step"]) == {0}
    summary = A.summarise_prompt_attention(frame, ("layer",))
    assert summary.loc[0, "mean"] == 0.5 and summary.loc[0, "min"] == 0.0 and summary.loc[0, "max"] == 1.0


def test_prompt_attention_on_smoke_model_and_plots():
    model = smoke_model("eager")
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    frame = A.prompt_attention(model, images=images, max_new_tokens=4, batch_size=2)
    layers, heads = model.llm.config.n_layer, model.llm.config.n_head
    assert set(frame["sample"]) == {0, 1, 2}
    assert frame.groupby("sample").size().isin([layers * heads * s for s in range(1, 5)]).all()
    assert frame["share"].between(0, 1).all()
    assert (frame["normalised_share"] >= 0).all()
    # features take the same path as images
    feats = model.encode_images(images)
    frame_f = A.prompt_attention(model, features=feats, max_new_tokens=4, batch_size=3)
    pd.testing.assert_frame_equal(frame, frame_f, check_exact=False, atol=1e-5)
    for fig in (A.plot_share_by_layer({"tiny": frame}), A.plot_share_over_steps(frame, normalised=True)):
        assert fig.axes
        plt.close(fig)


def test_sdpa_returns_no_attentions_and_we_say_so():
    model = smoke_model("sdpa")
    images = torch.randn(2, 3, 64, 64)
    # the real behaviour of transformers 5.x with SDPA: one empty tuple per step, no error
    with torch.no_grad():
        embeds = model._prefix_embeds(model.visual_prompts(images))
        out = model.llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                                 max_new_tokens=2, do_sample=False, output_attentions=True,
                                 return_dict_in_generate=True, pad_token_id=model.tokenizer.pad_token_id)
    assert out.attentions is None or all(len(step) == 0 for step in out.attentions)
    with pytest.raises(RuntimeError, match=re.escape("model.llm.attn_implementation: eager")):
        A.prompt_attention(model, images=images, max_new_tokens=2)


# -- calibration ------------------------------------------------------------------------------
def test_ece_zero_for_calibrated_data():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0, 1, 200_000)
    correct = rng.uniform(0, 1, conf.size) < conf
    for strategy in ("width", "mass"):
        assert A.ece(conf, correct, 15, strategy) < 0.01


def test_ece_hand_computed():
    conf = np.array([0.1, 0.2, 0.3, 0.4])
    correct = np.array([0, 0, 1, 1])
    # width, 2 bins: all in (0, 0.5]: accuracy 0.5, confidence 0.25
    assert A.ece(conf, correct, 2, "width") == pytest.approx(0.25)
    # mass, 2 bins: {0.1, 0.2} -> |0 - 0.15|, {0.3, 0.4} -> |1 - 0.35|; each half the data
    assert A.ece(conf, correct, 2, "mass") == pytest.approx(0.5 * 0.15 + 0.5 * 0.65)
    conf2 = np.r_[np.full(10, 0.9), np.full(10, 0.3)]
    correct2 = np.r_[np.ones(7), np.zeros(3), np.ones(3), np.zeros(7)]
    for strategy in ("width", "mass"):
        assert A.ece(conf2, correct2, 15 if strategy == "width" else 2, strategy) == pytest.approx(0.1)
    table = A.reliability_table(conf2, correct2, 15)
    assert table["count"].sum() == 20 and len(table) == 15
    row = table[table["count"] == 10].iloc[-1]
    assert row["confidence"] == pytest.approx(0.9) and row["accuracy"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="width' or 'mass"):
        A.ece(conf, correct, 2, "quantile")


def test_fit_temperature_recovers_known_temperature():
    # convention: calibrated p = softmax(logits / T). Targets drawn from softmax(z); the model
    # reports z / 2 (underconfident), so dividing by T = 0.5 restores calibration.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20_000, 10, generator=g) * 3
    y = torch.multinomial(torch.softmax(z, -1), 1, generator=g)[:, 0]
    t = A.fit_temperature(z / 2, y)
    assert t == pytest.approx(0.5, abs=0.03)
    assert A.fit_temperature(z, y) == pytest.approx(1.0, abs=0.05)
    probs = A.apply_temperature((z / 2)[:5], t)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def test_token_calibration_on_smoke_model():
    model = smoke_model("eager")
    reports = ["The heart size is normal.", "Small left pleural effusion."]
    tok = model.tokenize_reports(reports)
    batch = {"images": torch.randn(2, 3, 64, 64), "report_input_ids": tok["input_ids"],
             "report_attention_mask": tok["attention_mask"]}
    res = A.token_calibration(model, [batch, batch], max_logit_tokens=5)
    n = int(tok["attention_mask"].sum()) * 2
    assert res.confidence.shape == res.correct.shape == res.targets.shape == (n,)
    assert ((res.confidence > 0) & (res.confidence <= 1)).all()
    assert res.logits.shape == (5, len(model.tokenizer)) and res.logit_targets.shape == (5,)
    assert set(res.sample) == {0, 1, 2, 3}
    # the reference token's log-prob agrees with the model's own loss
    out = model(tok["input_ids"], tok["attention_mask"], images=batch["images"])
    half = n // 2
    assert -res.target_logprob[:half].mean() == pytest.approx(out.lm_loss.item(), rel=1e-4)
    assert 0 <= res.ece() <= 1


class WhitespaceTokenizer:
    """One token per whitespace-separated word, with character offsets."""

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        spans = [m.span() for m in re.finditer(r"\S+", text)]
        return {"input_ids": list(range(len(spans))), "offset_mapping": spans}


def test_finding_confidence_hand_example():
    texts = ["Small left pleural effusion. Heart size is normal.", "There is cardiomegaly. No effusion."]
    # tokens: Small left pleural effusion. Heart size is normal. (+ eos)
    lp1 = [math.log(p) for p in (0.5, 0.5, 0.9, 0.4, 0.8, 0.8, 0.8, 0.8, 0.9)]
    # tokens: There is cardiomegaly. No effusion.
    lp2 = [math.log(p) for p in (0.9, 0.9, 0.3, 0.6, 0.6)]
    refs = ["Large right pleural effusion.", "Heart size is normal."]
    df = A.finding_confidence(texts, [lp1, lp2], WhitespaceTokenizer(), refs)
    assert list(df["observation"]) == ["Pleural Effusion", "Cardiomegaly"]
    # "pleural effusion" covers tokens "pleural" and "effusion.": sqrt(0.9 * 0.4) = 0.6
    assert df.loc[0, "confidence"] == pytest.approx(0.6) and df.loc[0, "n_tokens"] == 2
    assert df.loc[1, "confidence"] == pytest.approx(0.3)  # the negated "effusion" is not stated
    assert list(df["correct"]) == [True, False]
    summary = A.finding_calibration_summary(df, n_bins=10)
    assert summary["precision"] == 0.5 and summary["confidence_fp"] == pytest.approx(0.3)
    assert summary["ece"] == pytest.approx(0.5 * abs(1 - 0.6) + 0.5 * abs(0 - 0.3))
    # a logprob list that cannot be aligned gives NaN, with a warning
    with pytest.warns(UserWarning, match="token_ids"):
        bad = A.finding_confidence(texts[:1], [lp1[:3]], WhitespaceTokenizer(), refs[:1])
    assert bad["confidence"].isna().all()
    fig = A.plot_reliability({"findings": (df["confidence"], df["correct"])}, n_bins=5)
    plt.close(fig)


def test_finding_confidence_with_real_tokenizer_and_generated_ids():
    model = smoke_model("eager")
    tok = model.tokenizer
    text = "Small left pleural effusion."
    ids = tok(" " + text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    lps = [math.log(0.5)] * len(ids)
    spans = A.mention_spans(text, "Pleural Effusion")
    assert [text[a:b] for a, b in spans] == ["pleural effusion"]
    for kwargs in ({}, {"token_ids": [ids]}):
        df = A.finding_confidence([text], [lps], tok, ["Effusion."], **kwargs)
        assert df.loc[0, "confidence"] == pytest.approx(0.5) and df.loc[0, "n_tokens"] >= 2


# -- grounding --------------------------------------------------------------------------------
def test_blank_and_shuffled_inputs():
    images = torch.randn(5, 3, 8, 8)
    blank = blank_like(images, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert blank.shape == images.shape
    np.testing.assert_allclose(blank[0, :, 0, 0], [(0.5 - 0.485) / 0.229, (0.5 - 0.456) / 0.224,
                                                   (0.5 - 0.406) / 0.225], rtol=1e-6)
    assert torch.equal(blank[0], blank[4])
    for seed in range(20):
        perm = A.derangement(5, seed)
        assert sorted(perm) == list(range(5)) and (perm != np.arange(5)).all()
    shuffled = A.shuffle_images(images, seed=3)
    assert torch.equal(shuffled, images[A.derangement(5, 3)])
    assert torch.equal(A.shuffle_images(images, 3), shuffled)  # seeded
    with pytest.raises(ValueError):
        A.derangement(1)


def test_grounding_table():
    results = {
        "real": {"F1-RB-14-micro": 0.6, "F1-RB-5-micro": 0.5, "P-RB-14-micro": 0.7},
        "blank": {"metrics": {"F1-RB-14-micro": 0.2, "F1-RB-5-micro": 0.1}},
        "shuffled": {"F1-RB-14-micro": 0.3, "F1-RB-5-micro": 0.4},
    }
    t = A.grounding_table(results)
    assert list(t.index) == ["F1-RB-14-micro", "F1-RB-5-micro"]
    assert t.loc["F1-RB-14-micro", "drop blank"] == pytest.approx(0.4)
    assert t.loc["F1-RB-5-micro", "drop shuffled"] == pytest.approx(0.1)
    with pytest.raises(KeyError, match="reference"):
        A.grounding_table(results, reference="true")
