"""What training measures on the validation split after each epoch.

- `val_loss`, and `val_loss_shuffled` with every report given another study's image: a gap
  between the two means the model reads the image;
- `prompt_image_dependence`: how much the soft prompts vary across images (0 = image-blind);
- `aux_f1`: the auxiliary finding head's micro-F1 (when the run has one);
- `val_f1`: F1-RB-14-micro of greedy reports for the first `train.val_generation_samples`
  validation studies, the same metric and code the evaluation reports.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator

from .config import RunConfig
from .features import Batcher, model_inputs
from .labeler import label_reports
from .metrics.clinical import clinical_efficacy, micro_f1
from .model import ReportGenerator, finding_targets


def image_dependence(prompts: torch.Tensor) -> float:
    """Variance of the soft prompts across images / their mean squared norm (0 = image-blind)."""
    p = prompts.float().flatten(1)
    return float(((p - p.mean(0)) ** 2).sum(1).mean() / (p ** 2).sum(1).mean().clamp_min(1e-12))


@torch.no_grad()
def validate(model: ReportGenerator, batcher: Batcher, cfg: RunConfig, accelerator: Accelerator,
             use_features: bool) -> dict[str, float]:
    """Validation loss with true and shuffled images, prompt image dependence, aux F1, val F1."""
    model.eval()
    n, size = len(batcher.dataset), cfg.data.eval_batch_size

    def in_batches(m: int) -> list[list[int]]:  # the first m studies
        return [list(range(i, min(i + size, m))) for i in range(0, m, size)]

    tot = tot_shuf = count = 0
    prompts, aux_logits, labels = [], [], []
    for batch in batcher.batches(in_batches(n), use_features):
        inputs = model_inputs(batch, accelerator.device)
        tokens = int(inputs["report_attention_mask"].sum())
        with accelerator.autocast():
            out = model(**inputs)
            # another patient's image: a gap to the true-image loss means the report uses the image
            shuffled = {k: (v.roll(1, 0) if k in ("images", "features") else v) for k, v in inputs.items()}
            out_shuf = model(**shuffled)
        tot += out.lm_loss.item() * tokens
        tot_shuf += out_shuf.lm_loss.item() * tokens
        count += tokens
        prompts.append(out.prompts.float().cpu())
        labels.append(inputs["labels"].cpu())
        if out.aux_logits is not None:
            aux_logits.append(out.aux_logits.float().cpu())
    metrics = {"val_loss": tot / count, "val_loss_shuffled": tot_shuf / count,
               "prompt_image_dependence": image_dependence(torch.cat(prompts))}
    metrics["val_shuffle_gap"] = metrics["val_loss_shuffled"] - metrics["val_loss"]
    if aux_logits:
        targets = finding_targets(torch.cat(labels)).numpy() > 0.5
        metrics["aux_f1"] = micro_f1(targets, torch.cat(aux_logits).numpy() > 0)
    k = min(cfg.train.val_generation_samples, n)
    if k > 0:  # greedy reports of the first k studies, labelled and scored as the evaluation does
        refs, hyps = [], []
        for batch in batcher.batches(in_batches(k), use_features):
            inputs = model_inputs(batch, accelerator.device)
            with accelerator.autocast():
                hyps += model.generate(images=inputs.get("images"), features=inputs.get("features"),
                                       max_new_tokens=cfg.generation.max_new_tokens).texts
            refs += batch["reports"]
        scores, _ = clinical_efficacy(label_reports(refs), label_reports(hyps))
        metrics["val_f1"] = scores["F1-RB-14-micro"]
        metrics["val_f1_reports"] = k
    return metrics
