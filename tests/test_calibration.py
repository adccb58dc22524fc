"""Calibration: ECE, temperature, token and finding-level confidence."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from _toydata import smoke_model  # noqa: E402

from rrglib import calibration as C  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# -- calibration ------------------------------------------------------------------------------
def test_ece_zero_for_calibrated_data():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0, 1, 200_000)
    correct = rng.uniform(0, 1, conf.size) < conf
    for strategy in ("width", "mass"):
        assert C.ece(conf, correct, 15, strategy) < 0.01


def test_ece_hand_computed():
    conf = np.array([0.1, 0.2, 0.3, 0.4])
    correct = np.array([0, 0, 1, 1])
    # width, 2 bins: all in (0, 0.5]: accuracy 0.5, confidence 0.25
    assert C.ece(conf, correct, 2, "width") == pytest.approx(0.25)
    # mass, 2 bins: {0.1, 0.2} -> |0 - 0.15|, {0.3, 0.4} -> |1 - 0.35|; each half the data
    assert C.ece(conf, correct, 2, "mass") == pytest.approx(0.5 * 0.15 + 0.5 * 0.65)
    conf2 = np.r_[np.full(10, 0.9), np.full(10, 0.3)]
    correct2 = np.r_[np.ones(7), np.zeros(3), np.ones(3), np.zeros(7)]
    for strategy in ("width", "mass"):
        assert C.ece(conf2, correct2, 15 if strategy == "width" else 2, strategy) == pytest.approx(0.1)
    table = C.reliability_table(conf2, correct2, 15)
    assert table["count"].sum() == 20 and len(table) == 15
    row = table[table["count"] == 10].iloc[-1]
    assert row["confidence"] == pytest.approx(0.9) and row["accuracy"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="width' or 'mass"):
        C.ece(conf, correct, 2, "quantile")


def test_fit_temperature_recovers_known_temperature():
    # convention: calibrated p = softmax(logits / T). Targets drawn from softmax(z); the model
    # reports z / 2 (underconfident), so dividing by T = 0.5 restores calibration.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20_000, 10, generator=g) * 3
    y = torch.multinomial(torch.softmax(z, -1), 1, generator=g)[:, 0]
    t = C.fit_temperature(z / 2, y)
    assert t == pytest.approx(0.5, abs=0.03)
    assert C.fit_temperature(z, y) == pytest.approx(1.0, abs=0.05)
    # confidence that runs against the outcome drives the unconstrained fit to T -> infinity (a
    # flat 0.5): it stops at the upper bound, T = e^3
    reversed_ = np.stack([np.zeros(6), np.array([3.0, 2, 1, -1, -2, -3])], axis=1)
    assert C.fit_temperature(reversed_, np.array([0, 0, 0, 1, 1, 1])) == pytest.approx(np.exp(3.0), rel=1e-4)


def test_token_calibration_on_smoke_model():
    model = smoke_model("eager")
    reports = ["The heart size is normal.", "Small left pleural effusion."]
    tok = model.tokenize_reports(reports)
    batch = {"images": torch.randn(2, 3, 64, 64), "report_input_ids": tok["input_ids"],
             "report_attention_mask": tok["attention_mask"]}
    res = C.token_calibration(model, [batch, batch], max_logit_tokens=5)
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


class WordTokenizer:
    """One token per whitespace-separated word; id -1 is the eos."""

    def __init__(self):
        self.words: list[str] = []

    def encode(self, text: str) -> list[int]:
        self.words += text.split()
        return list(range(len(self.words) - len(text.split()), len(self.words)))

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(self.words[i] for i in ids if i >= 0)


def test_finding_confidence_hand_example():
    texts = ["Small left pleural effusion. Heart size is normal.", "There is cardiomegaly. No effusion."]
    # tokens: Small left pleural effusion. Heart size is normal. (+ eos)
    lp1 = [math.log(p) for p in (0.5, 0.5, 0.9, 0.4, 0.8, 0.8, 0.8, 0.8, 0.9)]
    # tokens: There is cardiomegaly. No effusion.
    lp2 = [math.log(p) for p in (0.9, 0.9, 0.3, 0.6, 0.6)]
    refs = ["Large right pleural effusion.", "Heart size is normal."]
    tok = WordTokenizer()
    ids = [tok.encode(texts[0]) + [-1], tok.encode(texts[1])]
    df = C.finding_confidence(texts, [lp1, lp2], tok, refs, token_ids=ids)
    assert list(df["observation"]) == ["Pleural Effusion", "Cardiomegaly"]
    # "pleural effusion" covers tokens "pleural" and "effusion.": sqrt(0.9 * 0.4) = 0.6
    assert df.loc[0, "confidence"] == pytest.approx(0.6) and df.loc[0, "n_tokens"] == 2
    assert df.loc[1, "confidence"] == pytest.approx(0.3)  # the negated "effusion" is not stated
    assert list(df["correct"]) == [True, False]
    summary = C.finding_calibration_summary(df, n_bins=10)
    assert summary["precision"] == 0.5 and summary["confidence_fp"] == pytest.approx(0.3)
    assert summary["ece"] == pytest.approx(0.5 * abs(1 - 0.6) + 0.5 * abs(0 - 0.3))
    # a logprob list that cannot be aligned gives NaN, with a warning
    with pytest.warns(UserWarning, match="token_ids"):
        bad = C.finding_confidence(texts[:1], [lp1[:3]], tok, refs[:1], token_ids=ids[:1])
    assert bad["confidence"].isna().all()
    fig = C.plot_reliability({"findings": (df["confidence"], df["correct"])}, n_bins=5)
    plt.close(fig)


def test_finding_confidence_with_real_tokenizer_and_generated_ids():
    model = smoke_model("eager")
    tok = model.tokenizer
    text = "Small left pleural effusion."
    ids = tok(" " + text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    lps = [math.log(0.5)] * len(ids)
    spans = C.mention_spans(text, "Pleural Effusion")
    assert [text[a:b] for a, b in spans] == ["pleural effusion"]
    df = C.finding_confidence([text], [lps], tok, ["Effusion."], token_ids=[ids])
    assert df.loc[0, "confidence"] == pytest.approx(0.5) and df.loc[0, "n_tokens"] >= 2


def test_token_calibration_over_a_dataset_covers_every_report_token(tmp_path):
    from _toydata import make_toy_manifest

    from rrglib.data import ReportDataset, load_manifest

    model = smoke_model("eager")
    ds = ReportDataset(load_manifest(make_toy_manifest(tmp_path, 4, 2, 5)), "test", 64,
                       model.encoder.mean, model.encoder.std)
    res = C.token_calibration(model, C.report_batches(model, ds, batch_size=2))
    expected = int(model.tokenize_reports(list(ds.df["report"]))["attention_mask"].sum())
    assert len(res.correct) == expected and set(res.sample) == set(range(5))


# -- finding level, with the decision ---------------------------------------------------------
class ScriptedGenerator:
    """A stand-in for ReportGenerator: greedy calls return `greedy`, the k-th sampled call returns
    `samples[k]` (one text per study of the batch); records every call's keywords."""

    def __init__(self, greedy: list[str], samples: list[list[str]]):
        self.greedy, self.samples, self.calls = greedy, samples, []

    def generate(self, images=None, features=None, **kw):
        self.calls.append(kw)
        n_sampled = sum(c["do_sample"] for c in self.calls[:-1])
        texts = self.samples[n_sampled] if kw["do_sample"] else self.greedy
        return SimpleNamespace(texts=list(texts[: len(images)]))


def test_stating_fractions_and_confidence_hand_example():
    greedy = ["Small pleural effusion. Heart size is normal.", "There is cardiomegaly. No effusion."]
    samples = [["Pleural effusion.", "Cardiomegaly."],
               ["No effusion.", "No cardiomegaly. Possible effusion."],
               ["Possible pleural effusion.", "Heart size is normal."],
               ["Normal.", "Cardiomegaly."]]
    gen = ScriptedGenerator(greedy, samples)
    batch = {"images": torch.zeros(2, 3, 8, 8), "reports": ["Pleural effusion.", "Normal heart."]}
    texts, refs, frac = C.stating_fractions(gen, [batch], n_samples=4, max_new_tokens=7)
    assert texts == greedy and refs == batch["reports"]
    # study 0 states effusion in samples 1 and 3 (the uncertain one counts): 2/4
    assert frac.loc[0, "Pleural Effusion"] == 0.5 and frac.loc[0, "Cardiomegaly"] == 0.0
    # study 1: cardiomegaly in samples 1 and 4, effusion (uncertain) in sample 2
    assert frac.loc[1, "Cardiomegaly"] == 0.5 and frac.loc[1, "Pleural Effusion"] == 0.25
    assert [c["do_sample"] for c in gen.calls] == [False] + [True] * 4
    assert all(c["max_new_tokens"] == 7 for c in gen.calls) and gen.calls[1]["temperature"] == 1.0
    df = C.stating_confidence(texts, refs, frac)
    # greedy predictions: effusion (study 0, in the reference), cardiomegaly (study 1, not)
    assert list(zip(df["sample"], df["observation"], df["confidence"], df["correct"], strict=True)) == [
        (0, "Pleural Effusion", 0.5, True), (1, "Cardiomegaly", 0.5, False)]
    with pytest.raises(ValueError, match="one each per study"):
        C.stating_confidence(texts[:1], refs, frac)
    with pytest.raises(ValueError, match="n_samples"):
        C.stating_fractions(gen, [batch], n_samples=0)


def test_confidence_temperature_scaling_hand_example():
    # N = 4: clipped to [1/8, 7/8]; logit(7/8) = log 7
    z = C.confidence_logit([0.0, 0.5, 1.0], 4)
    assert z == pytest.approx([-math.log(7), 0.0, math.log(7)])
    assert C.scale_confidence([1.0, 0.5], 2.0, 4) == pytest.approx([math.sqrt(7) / (1 + math.sqrt(7)), 0.5])
    # findings stated at confidence 7/8 that are right half the time: T -> large (confidence -> 0.5)
    conf, correct = np.full(200, 1.0), np.r_[np.ones(100), np.zeros(100)]
    t = C.fit_confidence_temperature(conf, correct, 4)
    assert t > 20 and C.scale_confidence(conf, t, 4) == pytest.approx(np.full(200, 0.5), abs=0.05)
    # right 7 times in 8 at confidence 7/8: already calibrated, T = 1
    correct2 = np.r_[np.ones(175), np.zeros(25)]
    assert C.fit_confidence_temperature(conf, correct2, 4) == pytest.approx(1.0, abs=0.02)


def test_tp_fp_confidence_counts_means_and_intervals():
    df = pd.DataFrame({"sample": [0, 0, 1, 2], "observation": ["a", "b", "a", "a"],
                       "confidence": [0.9, 0.3, 0.7, float("nan")], "correct": [True, False, True, False]})
    s = C.tp_fp_confidence(df, n_boot=500)
    assert (s["n_tp"], s["n_fp"], s["n_studies"]) == (2, 1, 2)  # the NaN finding is left out
    assert s["confidence_tp"] == pytest.approx(0.8) and s["confidence_fp"] == pytest.approx(0.3)
    assert s["difference"] == pytest.approx(0.5)
    # resampling the two studies: TP mean is 0.9 (study 0 only), 0.7 (study 1 only) or 0.8
    assert s["confidence_tp_lo"] == pytest.approx(0.7) and s["confidence_tp_hi"] == pytest.approx(0.9)
    assert s["confidence_fp_lo"] == s["confidence_fp_hi"] == pytest.approx(0.3)  # one FP, always drawn
    # a difference needs study 0 (the FP): {0, 0} gives 0.9 - 0.3, {0, 1} gives 0.8 - 0.3
    assert s["difference_lo"] == pytest.approx(0.5) and s["difference_hi"] == pytest.approx(0.6)
    empty = C.tp_fp_confidence(df[df["correct"]])
    assert empty["n_fp"] == 0 and math.isnan(empty["confidence_fp"]) and math.isnan(empty["difference_lo"])


def test_plot_reliability_writes_bin_counts():
    fig = C.plot_reliability({"x": (np.array([0.1, 0.15, 0.9]), np.array([0, 1, 1]))}, n_bins=2, show_counts=True)
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["n=1", "n=2"]
    plt.close(fig)


def test_stating_fractions_with_smoke_model_are_seeded():
    model = smoke_model("eager")
    batch = {"images": torch.randn(2, 3, 64, 64), "reports": ["Cardiomegaly.", "Normal."]}
    runs = [C.stating_fractions(model, [batch], n_samples=3, max_new_tokens=6, seed=5) for _ in range(2)]
    texts, refs, frac = runs[0]
    assert len(texts) == 2 and refs == batch["reports"] and frac.shape == (2, 14)
    assert frac.equals(runs[1][2]) and texts == runs[1][0]  # same seed, same samples
    assert ((frac * 3).round(9) % 1 == 0).all().all()  # multiples of 1/N
