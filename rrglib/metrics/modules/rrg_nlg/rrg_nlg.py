"""rrg_nlg: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D (pycocoevalcap, PTB tokenizer) as an
`evaluate` module. A thin wrapper over rrglib.metrics.nlg_scores."""

import datasets
import evaluate

from rrglib.metrics.nlg import nlg_scores

_KWARGS = """
Args:
    predictions: generated reports (list of str).
    references: reference reports (list of str), one per prediction.
    backend: "auto" (Java when present), "java" or "python" (non-standard fallback).
Returns: {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}, corpus level.
"""
_FEATURES = {"predictions": datasets.Value("string"), "references": datasets.Value("string")}


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS)
class RrgNlg(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(description=__doc__, citation="", inputs_description=_KWARGS,
                                   features=datasets.Features(_FEATURES))

    def _compute(self, predictions, references, backend: str = "auto") -> dict:
        return nlg_scores(list(references), list(predictions), backend=backend)
