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

from rrglib import attention as AT  # noqa: E402
from rrglib.config import load_config  # noqa: E402
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
    share, norm = AT.prompt_attention_share([w, w], num_prompts=4)
    assert share.shape == (2, 2, 3, 1)
    np.testing.assert_allclose(share, 1.0)
    np.testing.assert_allclose(norm, 10 / 4)  # expected share 4/10


def test_uniform_attention_gives_normalised_share_one_and_causal_positions():
    # prefill: 6 queries over 6 positions, causal uniform attention; K = 2
    q = length = 6
    w = torch.tril(torch.ones(q, length))
    w = (w / w.sum(-1, keepdim=True)).expand(1, 2, q, length)
    share, norm = AT.prompt_attention_share([w], num_prompts=2)
    # query at position i sees i + 1 positions, min(2, i + 1) of them prompts
    expected = [min(2, i + 1) / (i + 1) for i in range(q)]
    np.testing.assert_allclose(share[0, 0, 0], expected)
    np.testing.assert_allclose(norm, 1.0)


def test_padding_is_masked_out_of_the_expected_share():
    # sample 1 has two padded positions (3 and 4, e.g. finished rows); uniform over the rest
    mask = torch.tensor([[1] * 8, [1, 1, 1, 0, 0, 1, 1, 1]])
    w = mask[:, None, None, :].float().expand(2, 1, 1, 8)
    w = w / w.sum(-1, keepdim=True)
    share, norm = AT.prompt_attention_share([w], num_prompts=2, attention_mask=mask)
    np.testing.assert_allclose(share[0, :, 0, 0], [2 / 8, 2 / 6])
    np.testing.assert_allclose(norm, 1.0)
    # a padded *prompt* position shrinks the expectation too: K = 3 with position 1 padded
    mask2 = torch.tensor([[1, 0, 1, 1]])
    w2 = torch.tensor([[[[0.5, 0.0, 0.5, 0.0]]]])
    share2, norm2 = AT.prompt_attention_share([w2], num_prompts=3, attention_mask=mask2)
    assert share2.item() == pytest.approx(1.0)
    assert norm2.item() == pytest.approx(1.0 / (2 / 3))


def test_generation_steps_take_the_last_query():
    # step 0 = prefill (q = 3 over 3), step 1 = one query over 4 positions; 2 heads differ
    k = 1
    step0 = torch.zeros(1, 2, 3, 3)
    step0[0, 0, -1] = torch.tensor([1.0, 0.0, 0.0])  # head 0: all on the prompt
    step0[0, 1, -1] = torch.tensor([0.0, 0.5, 0.5])  # head 1: none
    step1 = torch.full((1, 2, 1, 4), 0.25)
    share, norm = AT.generation_prompt_share([(step0,), (step1,)], num_prompts=k)
    assert share.shape == (2, 1, 1, 2)  # (steps, layers, B, H)
    np.testing.assert_allclose(share[0, 0, 0], [1.0, 0.0])
    np.testing.assert_allclose(norm[1, 0, 0], [1.0, 1.0])
    frame = AT.attention_frame(share, norm, valid=np.array([[True], [False]]))
    assert len(frame) == 2 and set(frame["step"]) == {0}
    summary = AT.summarise_prompt_attention(frame, ("layer",))
    assert summary.loc[0, "mean"] == 0.5 and summary.loc[0, "min"] == 0.0 and summary.loc[0, "max"] == 1.0


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
