"""Grounding controls: blank and shuffled inputs, the grounding table."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from rrglib import grounding as G  # noqa: E402
from rrglib.config import load_config  # noqa: E402
from rrglib.evaluate import blank_like  # noqa: E402
from rrglib.model import ReportGenerator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def smoke_model(attn: str = "eager", llm: str = "tiny-gpt2") -> ReportGenerator:
    cfg = load_config(ROOT / "configs" / "smoke.yaml").model
    cfg.llm.name, cfg.llm.attn_implementation = llm, attn
    torch.manual_seed(0)
    return ReportGenerator(cfg).eval()


# -- grounding --------------------------------------------------------------------------------
def test_blank_and_shuffled_inputs():
    images = torch.randn(5, 3, 8, 8)
    blank = blank_like(images, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert blank.shape == images.shape
    np.testing.assert_allclose(blank[0, :, 0, 0], [(0.5 - 0.485) / 0.229, (0.5 - 0.456) / 0.224,
                                                   (0.5 - 0.406) / 0.225], rtol=1e-6)
    assert torch.equal(blank[0], blank[4])
    for seed in range(20):
        perm = G.derangement(5, seed)
        assert sorted(perm) == list(range(5)) and (perm != np.arange(5)).all()
    shuffled = G.shuffle_images(images, seed=3)
    assert torch.equal(shuffled, images[G.derangement(5, 3)])
    assert torch.equal(G.shuffle_images(images, 3), shuffled)  # seeded
    with pytest.raises(ValueError):
        G.derangement(1)


def test_grounding_table():
    results = {
        "real": {"F1-RB-14-micro": 0.6, "F1-RB-5-micro": 0.5, "P-RB-14-micro": 0.7},
        "blank": {"metrics": {"F1-RB-14-micro": 0.2, "F1-RB-5-micro": 0.1}},
        "shuffled": {"F1-RB-14-micro": 0.3, "F1-RB-5-micro": 0.4},
    }
    t = G.grounding_table(results)
    assert list(t.index) == ["F1-RB-14-micro", "F1-RB-5-micro"]
    assert t.loc["F1-RB-14-micro", "drop blank"] == pytest.approx(0.4)
    assert t.loc["F1-RB-5-micro", "drop shuffled"] == pytest.approx(0.1)
    with pytest.raises(KeyError, match="reference"):
        G.grounding_table(results, reference="true")
