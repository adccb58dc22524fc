"""Natural-language-generation metrics: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (pycocoevalcap).

The standard path tokenises with the Stanford PTB tokenizer and scores METEOR 1.5 (Java jars in
pycocoevalcap), each in one call over the whole test set. Without Java a Python fallback
tokenises (lower case, alphanumeric runs): BLEU/ROUGE-L/CIDEr are then near but not the standard
numbers and METEOR is NaN, with a warning. ``nlg_pair_stats`` also returns per-pair statistics
so that bootstrap resampling never calls Java again.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator

import numpy as np

NLG_KEYS: tuple[str, ...] = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
# per-pair columns: BLEU matches (4), BLEU guesses (4), hypothesis length, reference length
BLEU_COLUMNS: tuple[str, ...] = (*(f"bleu_correct_{n}" for n in range(1, 5)),
                                 *(f"bleu_guess_{n}" for n in range(1, 5)),
                                 "bleu_hyp_len", "bleu_ref_len")
# pycocoevalcap's constants: they keep BLEU defined when a count is zero
_TINY, _SMALL = 1e-15, 1e-9
_PY_TOKEN = re.compile(r"[a-z0-9]+")


def java_available() -> bool:
    """True when a `java` executable is on PATH and RRG_NO_JAVA is not set."""
    return shutil.which("java") is not None and not os.environ.get("RRG_NO_JAVA")


def _resolve_backend(backend: str) -> str:
    if backend not in ("auto", "java", "python"):
        raise ValueError(f"backend must be auto, java or python, got {backend!r}")
    if backend == "auto":
        backend = "java" if java_available() else "python"
    if backend == "java" and not java_available():
        raise RuntimeError("backend='java' but no java on PATH: install OpenJDK 17 or use 'python'")
    if backend == "python" and not java_available():  # with Java present, "python" is a choice
        warnings.warn(
            "NLG metrics without Java: Python tokenisation instead of the PTB tokenizer, so BLEU, "
            "ROUGE-L and CIDEr are not the standard pycocoevalcap numbers, and METEOR is "
            "unavailable (NaN). Install Java 17 for the standard metrics.", RuntimeWarning,
            stacklevel=3)
    return backend


@contextlib.contextmanager
def subprocess_stderr_held() -> Iterator[None]:
    """Hold what child processes write to this process's stderr (the PTB jar's progress line,
    red in a notebook) and show it only if the block fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace")[-4000:])
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def tokenize(texts: list[str], backend: str = "java") -> list[str]:
    """Tokenise texts to space-joined lower-case tokens without punctuation (PTB or Python)."""
    texts = [" ".join(str(t or "").split()) for t in texts]  # no new lines: one text per line
    if backend == "python":
        return [" ".join(_PY_TOKEN.findall(t.lower())) for t in texts]
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    with subprocess_stderr_held():
        out = PTBTokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
    # the jar drops trailing empty lines; those texts tokenise to nothing
    return [out.get(i, [""])[0] for i in range(len(texts))]


def _bleu_pair_stats(hyp: str, ref: str) -> list[float]:
    h, r = hyp.split(), ref.split()
    correct, guess = [], []
    for n in range(1, 5):
        hc = Counter(tuple(h[i : i + n]) for i in range(len(h) - n + 1))
        rc = Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
        correct.append(sum(min(c, rc[g]) for g, c in hc.items()))
        guess.append(max(len(h) - n + 1, 0))
    return [*correct, *guess, len(h), len(r)]


def bleu_from_sums(sums: np.ndarray) -> np.ndarray:
    """BLEU-1..4 from summed BLEU_COLUMNS (shape (..., 10)) with pycocoevalcap's formula."""
    sums = np.asarray(sums, dtype=float)
    precision = (sums[..., 0:4] + _TINY) / (sums[..., 4:8] + _SMALL)
    bleu = np.cumprod(precision, axis=-1) ** (1.0 / np.arange(1, 5))
    ratio = (sums[..., 8] + _TINY) / (sums[..., 9] + _SMALL)
    with np.errstate(divide="ignore", over="ignore"):
        brevity = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
    return bleu * brevity[..., None]


def nlg_pair_stats(references: list[str], hypotheses: list[str],
                   backend: str = "auto") -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(corpus scores keyed by NLG_KEYS, per-pair arrays "bleu" (n, 10) in BLEU_COLUMNS order,
    "rouge", "cider", "meteor" (n,)), from one tokenizer call and one METEOR call."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no reports to score")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    backend = _resolve_backend(backend)
    n = len(references)
    tokens = tokenize(list(references) + list(hypotheses), backend)
    refs, hyps = tokens[:n], tokens[n:]
    gts, res = {i: [refs[i]] for i in range(n)}, {i: [hyps[i]] for i in range(n)}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its counts
        bleu, _ = Bleu(4).compute_score(gts, res)
    rouge, rouge_pairs = Rouge().compute_score(gts, res)
    cider, cider_pairs = Cider().compute_score(gts, res)
    if backend == "java":
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        meteor, meteor_pairs = scorer.compute_score(gts, res)
        del scorer  # closes the JVM now rather than at interpreter exit
    else:
        meteor, meteor_pairs = float("nan"), [float("nan")] * n
    scores = dict(zip(NLG_KEYS[:4], map(float, bleu), strict=True))
    scores.update({"METEOR": float(meteor), "ROUGE-L": float(rouge), "CIDEr": float(cider)})
    bleu_pairs = [_bleu_pair_stats(h, r) for h, r in zip(hyps, refs, strict=True)]
    pairs = {"bleu": np.array(bleu_pairs, float), "rouge": np.asarray(rouge_pairs, float),
             "cider": np.asarray(cider_pairs, float), "meteor": np.asarray(meteor_pairs, float)}
    return scores, pairs


def nlg_scores(references: list[str], hypotheses: list[str],
               backend: str = "auto") -> dict[str, float]:
    """Corpus-level BLEU-1..4, METEOR, ROUGE-L and CIDEr-D of hypotheses against references."""
    return nlg_pair_stats(references, hypotheses, backend)[0]
