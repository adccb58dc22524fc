"""Grounding controls: the blank input and the grounding table (derangement: test_evaluate)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rrglib import grounding as G
from rrglib.evaluate import blank_like


def test_blank_input_is_a_normalised_uniform_gray():
    images = torch.randn(5, 3, 8, 8)
    blank = blank_like(images, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert blank.shape == images.shape
    np.testing.assert_allclose(blank[0, :, 0, 0], [(0.5 - 0.485) / 0.229, (0.5 - 0.456) / 0.224,
                                                   (0.5 - 0.406) / 0.225], rtol=1e-6)
    assert torch.equal(blank[0], blank[4])


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
