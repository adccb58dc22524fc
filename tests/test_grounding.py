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


def _stats(references, hypotheses):
    from rrglib.metrics import build_study_stats

    return build_study_stats(references, hypotheses, backend="python")[0]


def test_grounding_tests_detect_a_drop_and_not_a_copy():
    refs = ["There is a right pleural effusion.", "The heart is enlarged.",
            "There is a left lower lobe opacity.", "No acute cardiopulmonary abnormality."] * 10
    normal = ["No acute cardiopulmonary abnormality."] * len(refs)
    stats = {"true": _stats(refs, refs), "shuffled": _stats(refs, normal), "copy": _stats(refs, refs)}
    metric = "F1-RB-14-micro"
    table = G.grounding_tests(stats, [metric], n_resamples=999)
    drop = table.set_index("condition").loc["shuffled"]
    assert drop["drop"] == pytest.approx(stats["true"].point()[metric] - stats["shuffled"].point()[metric])
    assert drop["drop"] > 0.5 and drop["ci low"] > 0 and drop["p Holm"] < 0.01
    same = table.set_index("condition").loc["copy"]
    assert same["drop"] == 0 and same["ci low"] == same["ci high"] == 0 and same["p"] == 1
    text = G.grounding_conclusion(table, metric, n_resamples=999)
    assert "detectably lower" in text and "40 studies" in text
    copy = G.grounding_conclusion(table, metric, condition="copy")
    assert copy.startswith("With the copy input") and "no detectable change" in copy


def test_grounding_tests_resample_whole_clusters():
    refs = ["The heart is enlarged.", "No acute cardiopulmonary abnormality."] * 6
    gens = ["The heart is enlarged."] * 12
    stats = {"true": _stats(refs, refs), "shuffled": _stats(refs, gens)}
    clusters = np.repeat(np.arange(3), 4)  # 3 source reports of 4 studies each
    table = G.grounding_tests(stats, ["F1-RB-14-micro"], clusters=clusters, n_resamples=200)
    assert table.loc[0, "clusters"] == 3 and table.loc[0, "studies"] == 12
    # with 3 clusters a permutation has 2**3 distinct swaps: p cannot go below 1/8 in expectation
    assert table.loc[0, "p"] > 0.05
    with pytest.raises(KeyError, match="reference"):
        G.grounding_tests(stats, ["F1-RB-14-micro"], reference="real")
