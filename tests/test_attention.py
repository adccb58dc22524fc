"""Attention to the soft visual prompts: share arithmetic, generation with attentions, plots."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from _toydata import smoke_model  # noqa: E402

from rrglib import attention as AT  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# -- attention share --------------------------------------------------------------------------
def test_all_mass_on_prompts_gives_share_one():
    w = torch.zeros(2, 3, 1, 10)
    w[..., :4] = 0.25
    share, norm = AT.prompt_attention_share([w, w], prompts=4)
    assert share.shape == (2, 2, 3, 1)
    np.testing.assert_allclose(share, 1.0)
    np.testing.assert_allclose(norm, 10 / 4)  # expected share 4/10


def test_uniform_attention_gives_normalised_share_one_and_causal_positions():
    # prefill: 6 queries over 6 positions, causal uniform attention; K = 2
    q = length = 6
    w = torch.tril(torch.ones(q, length))
    w = (w / w.sum(-1, keepdim=True)).expand(1, 2, q, length)
    share, norm = AT.prompt_attention_share([w], prompts=2)
    # query at position i sees i + 1 positions, min(2, i + 1) of them prompts
    expected = [min(2, i + 1) / (i + 1) for i in range(q)]
    np.testing.assert_allclose(share[0, 0, 0], expected)
    np.testing.assert_allclose(norm, 1.0)


def test_prompts_after_a_bos_position():
    # BOS at position 0 (the sink), prompts at 1..2, uniform causal attention over 5 positions
    q = length = 5
    w = torch.tril(torch.ones(q, length))
    w = (w / w.sum(-1, keepdim=True)).expand(1, 1, q, length)
    share, norm = AT.prompt_attention_share([w], prompts=slice(1, 3))
    # query i sees i + 1 positions, of which min(2, max(i, 0)) are prompts (position 0 is BOS)
    expected = [min(2, i) / (i + 1) for i in range(q)]
    np.testing.assert_allclose(share[0, 0, 0], expected)
    np.testing.assert_allclose(norm[0, 0, 0, 1:], 1.0)  # query 0 sees no prompt: 0/0
    w_sink = torch.zeros(1, 1, 1, 5)
    w_sink[..., 0] = 1.0  # all on BOS: nothing on the prompts
    assert AT.prompt_attention_share([w_sink], prompts=slice(1, 3))[0].item() == 0.0


def test_padding_is_masked_out_of_the_expected_share():
    # sample 1 has two padded positions (3 and 4, e.g. finished rows); uniform over the rest
    mask = torch.tensor([[1] * 8, [1, 1, 1, 0, 0, 1, 1, 1]])
    w = mask[:, None, None, :].float().expand(2, 1, 1, 8)
    w = w / w.sum(-1, keepdim=True)
    share, norm = AT.prompt_attention_share([w], prompts=2, attention_mask=mask)
    np.testing.assert_allclose(share[0, :, 0, 0], [2 / 8, 2 / 6])
    np.testing.assert_allclose(norm, 1.0)
    # a padded *prompt* position shrinks the expectation too: K = 3 with position 1 padded
    mask2 = torch.tensor([[1, 0, 1, 1]])
    w2 = torch.tensor([[[[0.5, 0.0, 0.5, 0.0]]]])
    share2, norm2 = AT.prompt_attention_share([w2], prompts=3, attention_mask=mask2)
    assert share2.item() == pytest.approx(1.0)
    assert norm2.item() == pytest.approx(1.0 / (2 / 3))


def test_generation_steps_take_the_last_query():
    # step 0 = prefill (q = 3 over 3), step 1 = one query over 4 positions; 2 heads differ
    k = 1
    step0 = torch.zeros(1, 2, 3, 3)
    step0[0, 0, -1] = torch.tensor([1.0, 0.0, 0.0])  # head 0: all on the prompt
    step0[0, 1, -1] = torch.tensor([0.0, 0.5, 0.5])  # head 1: none
    step1 = torch.full((1, 2, 1, 4), 0.25)
    share, norm = AT.generation_prompt_share([(step0,), (step1,)], prompts=k)
    assert share.shape == (2, 1, 1, 2)  # (steps, layers, B, H)
    np.testing.assert_allclose(share[0, 0, 0], [1.0, 0.0])
    np.testing.assert_allclose(norm[1, 0, 0], [1.0, 1.0])
    frame = AT.attention_frame(share, norm, valid=np.array([[True], [False]]))
    assert len(frame) == 2 and set(frame["step"]) == {0}
    np.testing.assert_allclose(frame["share"], [1.0, 0.0])  # step 1 dropped: the sample had ended


# -- intervals over studies and the real-vs-deranged contrast ----------------------------------
def hand_frame(shares: dict[tuple[int, int], list[float]]) -> pd.DataFrame:
    """{(sample, layer): per-head shares} -> an attention_frame-like table (one step)."""
    rows = [{"sample": s, "layer": layer, "depth": float(layer), "head": h, "step": 0, "share": v,
             "normalised_share": 2 * v} for (s, layer), heads in shares.items() for h, v in enumerate(heads)]
    return pd.DataFrame(rows)


def test_share_per_layer_from_hand_built_weights_and_interval_over_studies():
    # 3 studies, 2 layers, 2 heads, one query over 4 positions, K = 1 prompt.
    # layer 0: head 0 puts a on the prompt, head 1 puts 0 -> study share a / 2 with a = 0.2, 0.4, 0.6
    # layer 1: both heads put 0.5 on the prompt -> share 0.5 for every study
    w0 = torch.zeros(3, 2, 1, 4)
    for b, a in enumerate([0.2, 0.4, 0.6]):
        w0[b, 0, 0] = torch.tensor([a, 1 - a, 0, 0])
        w0[b, 1, 0] = torch.tensor([0.0, 0.5, 0.5, 0])
    w1 = torch.tensor([0.5, 0.5, 0.0, 0.0]).expand(3, 2, 1, 4)
    share, norm = AT.generation_prompt_share([(w0, w1)], prompts=1)
    frame = AT.attention_frame(share, norm)
    per_study = AT.per_study_share(frame)
    np.testing.assert_allclose(per_study.query("layer == 0")["share"], [0.1, 0.2, 0.3], atol=1e-6)
    table = AT.summarise_over_studies(frame)
    # layer 0: mean 0.2, sd 0.1, n 3 -> half width t(0.975, 2) * 0.1 / sqrt(3) = 4.302653 * 0.057735 = 0.248414
    row = table.set_index("layer").loc[0]
    assert row["mean"] == pytest.approx(0.2, abs=1e-6) and row["n"] == 3
    assert row["hi"] - row["mean"] == pytest.approx(0.248414, abs=1e-5)
    assert row["lo"] < 0  # the interval itself is not clipped; the plot clips its band
    # layer 1: no spread between studies -> a zero-width interval
    row = table.set_index("layer").loc[1]
    assert (row["mean"], row["lo"], row["hi"]) == pytest.approx((0.5, 0.5, 0.5), abs=1e-6)
    # normalised share: K / positions = 1 / 4 expected -> layer 1 normalised = 0.5 / 0.25 = 2
    norm_table = AT.summarise_over_studies(frame, value="normalised_share")
    assert norm_table.set_index("layer").loc[1, "mean"] == pytest.approx(2.0)


def test_mean_interval_edge_cases():
    assert AT.mean_interval([0.3])[:2] == (pytest.approx(0.3), pytest.approx(float("nan"), nan_ok=True))
    mean, lo, hi, n = AT.mean_interval(np.array([1.0, 3.0]))
    # sd sqrt(2), t(0.975, 1) = 12.7062 -> half width 12.7062 * sqrt(2) / sqrt(2) = 12.7062
    assert (mean, n) == (2.0, 2) and hi - mean == pytest.approx(12.7062, abs=1e-4) and lo == pytest.approx(2 - 12.7062, abs=1e-4)
    assert AT.mean_interval([])[3] == 0


def test_paired_difference_real_vs_deranged_worked_by_hand():
    # 4 studies, one layer, one head. real: 0.5, 0.6, 0.7, 0.8; deranged: 0.4, 0.4, 0.6, 0.6
    # differences 0.1, 0.2, 0.1, 0.2: mean 0.15, sd 0.057735, se 0.028868, t = 5.196, df 3
    real = hand_frame({(i, 0): [v] for i, v in enumerate([0.5, 0.6, 0.7, 0.8])})
    der = hand_frame({(i, 0): [v] for i, v in enumerate([0.4, 0.4, 0.6, 0.6])})
    diff = AT.paired_difference(real, der)
    row = diff.iloc[0]
    assert row["mean"] == pytest.approx(0.15) and row["n"] == 4
    half = 3.182446 * 0.057735 / 2  # t(0.975, 3) * sd / sqrt(4)
    assert (row["lo"], row["hi"]) == pytest.approx((0.15 - half, 0.15 + half), abs=1e-5)
    assert row["p_value"] == pytest.approx(0.013847, abs=1e-5)  # 2 * P(T_3 > 5.196)
    assert row["lo"] > 0  # the interval excludes 0 exactly when p < 0.05
    # pairing matters: the same values unpaired would have a much wider spread of differences
    shuffled = der.assign(sample=der["sample"].map({0: 3, 1: 2, 2: 1, 3: 0}))
    assert AT.paired_difference(real, shuffled).iloc[0]["p_value"] > 0.05
    # identical conditions: difference 0 with p = 1, not nan
    same = AT.paired_difference(real, real).iloc[0]
    assert (same["mean"], same["lo"], same["hi"], same["p_value"]) == (0, 0, 0, 1.0)


def test_compare_conditions_gives_tidy_rows_for_both_and_the_difference():
    real = hand_frame({(0, 0): [0.5, 0.3], (1, 0): [0.6, 0.4], (0, 1): [0.2, 0.2], (1, 1): [0.3, 0.3]})
    der = hand_frame({(0, 0): [0.3, 0.3], (1, 0): [0.3, 0.3], (0, 1): [0.2, 0.2], (1, 1): [0.3, 0.3]})
    table = AT.compare_conditions({"real": real, "deranged": der})
    assert list(table.columns) == ["layer", "condition", "mean", "lo", "hi", "n", "p_value", "test"]
    assert list(table["condition"].unique()) == ["real", "deranged", "real - deranged"] and len(table) == 6
    t = table.set_index(["condition", "layer"])
    # layer 0: real per study (0.5 + 0.3) / 2 = 0.4 and 0.5 -> mean 0.45; deranged 0.3 -> difference 0.1, 0.2
    assert t.loc[("real", 0), "mean"] == pytest.approx(0.45)
    assert t.loc[("real - deranged", 0), "mean"] == pytest.approx(0.15)
    assert t.loc[("real - deranged", 1), "p_value"] == 1.0
    assert t.loc[("real - deranged", 0), "test"] == "paired t-test" and pd.isna(t.loc[("real", 0), "test"])
    with pytest.raises(KeyError, match="deranged"):
        AT.compare_conditions({"real": real, "shuffled": der})


def test_plotted_band_is_clipped_to_the_unit_interval():
    table = pd.DataFrame({"layer": [0, 1], "condition": "real", "mean": [0.9, 0.1], "lo": [0.7, -0.2],
                          "hi": [1.3, 0.3]})
    fig = AT.plot_intervals(table)
    (band,) = fig.axes[0].collections
    ys = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
    assert ys.min() >= 0.0 and ys.max() <= 1.0
    plt.close(fig)


def test_prompt_attention_on_smoke_model_and_plots():
    model = smoke_model("eager")
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    frame = AT.prompt_attention(model, images=images, max_new_tokens=4, batch_size=2)
    layers, heads = model.llm.config.n_layer, model.llm.config.n_head
    assert set(frame["sample"]) == {0, 1, 2}
    assert frame.groupby("sample").size().isin([layers * heads * s for s in range(1, 5)]).all()
    assert frame["share"].between(0, 1).all()
    assert (frame["normalised_share"] >= 0).all()
    # features take the same path as images
    feats = model.encode_images(images)
    frame_f = AT.prompt_attention(model, features=feats, max_new_tokens=4, batch_size=3)
    pd.testing.assert_frame_equal(frame, frame_f, check_exact=False, atol=1e-5)
    for fig in (AT.plot_share_by_layer({"tiny": frame}), AT.plot_share_over_steps(frame, normalised=True)):
        assert fig.axes
        plt.close(fig)


def test_sdpa_returns_no_attentions_and_we_say_so():
    model = smoke_model("sdpa")
    images = torch.randn(2, 3, 64, 64)
    # transformers 5.x with SDPA returns one empty tuple per step and no error: generate says so
    with pytest.raises(RuntimeError, match=re.escape("model.llm.attn_implementation: eager")):
        model.generate(images=images, max_new_tokens=2, output_attentions=True)
    with pytest.raises(RuntimeError, match=re.escape("model.llm.attn_implementation: eager")):
        AT.prompt_attention(model, images=images, max_new_tokens=2)
    with pytest.raises(RuntimeError, match=re.escape("model.llm.attn_implementation: eager")):
        AT.teacher_forced_attention(model, ["a", "b"], images=images)


def test_generation_attentions_cover_prefix_and_steps():
    model = smoke_model("eager")
    out = model.generate(images=torch.randn(2, 3, 64, 64), max_new_tokens=3, output_attentions=True)
    layers, heads = model.llm.config.n_layer, model.llm.config.n_head
    prefix = model.num_prefix_tokens
    assert len(out.attentions[0]) == layers
    assert out.attentions[0][0].shape == (2, heads, prefix, prefix)  # step 0: the prefill
    if len(out.attentions) > 1:
        assert out.attentions[1][0].shape == (2, heads, 1, prefix + 1)
    assert model.generate(images=torch.randn(2, 3, 64, 64), max_new_tokens=3).attentions is None


def test_teacher_forced_attention_pairs_reports_with_real_or_deranged_images():
    from rrglib.data import derangement

    model = smoke_model("eager")
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    reports = ["no acute findings .", "small left effusion", "heart size normal . lungs clear ."]
    real = AT.teacher_forced_attention(model, reports, images=images, batch_size=2)
    layers, heads = model.llm.config.n_layer, model.llm.config.n_head
    assert len(real) == 3 * layers * heads and set(real["sample"]) == {0, 1, 2}
    assert real["share"].between(0, 1).all()
    perm = derangement(3, seed=0)
    der = AT.teacher_forced_attention(model, reports, images=images[perm], batch_size=3)
    # the same report with another image: a different share, and the table pairs them per study
    assert not np.allclose(real["share"], der["share"])
    table = AT.compare_conditions({"real": real, "deranged": der})
    assert (table.query("condition == 'real - deranged'")["n"] == 3).all()
    # padding does not change a study's value: report 0 alone equals report 0 in a padded batch
    alone = AT.teacher_forced_attention(model, reports[:1], images=images[:1])
    np.testing.assert_allclose(alone["share"], real.query("sample == 0")["share"], atol=1e-5)
    with pytest.raises(ValueError, match="one image"):
        AT.teacher_forced_attention(model, reports[:2], images=images)
