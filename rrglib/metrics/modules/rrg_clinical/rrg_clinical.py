"""rrg_clinical: clinical efficacy P/R/F1 (micro/macro; all 14 observations, the 13 abnormal
ones, and 5; both uncertainty conventions) from labels of generated and reference reports, as an
`evaluate` module. A thin wrapper over rrglib.metrics.clinical_efficacy (rule-based labeler by
default)."""

import datasets
import evaluate

from rrglib.labeler import get_labeler
from rrglib.metrics.clinical import clinical_efficacy

_KWARGS = """
Args:
    predictions: generated reports (list of str).
    references: reference reports (list of str), one per prediction.
    labeler: None/"rule" (rule-based, names "...-RB-...") or a local CheXbert checkpoint path.
Returns: {"F1-RB-14-micro": ..., "F1-RB-13abn-micro": ..., "P-RB-5-macro": ...,
    "F1-RB-14-micro-u0": ..., ...}.
"""
_FEATURES = {"predictions": datasets.Value("string"), "references": datasets.Value("string")}


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS)
class RrgClinical(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(description=__doc__, citation="", inputs_description=_KWARGS,
                                   features=datasets.Features(_FEATURES))

    def _compute(self, predictions, references, labeler=None) -> dict:
        lab = get_labeler(labeler)
        scores, _ = clinical_efficacy(lab.label_reports(list(references)),
                                      lab.label_reports(list(predictions)), tag=lab.tag)
        return scores
