"""CheXbert (Smit et al. 2020) from a local checkpoint, behind the labeler interface."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rrglib.labeler.engine import NAN, NEG, POS, UNC, normalise
from rrglib.labels import ABNORMAL, CHEXPERT_OBSERVATIONS

# Keys of CheXbert's checkpoint the rebuilt model has no place for, by design: a buffer older
# transformers versions saved, and the pooler (the heads read the [CLS] hidden state).
IGNORED_BERT_KEYS = frozenset({"embeddings.position_ids", "pooler.dense.weight",
                               "pooler.dense.bias"})


def load_strict(module: Any, state: dict[str, Any], path: Path, prefix: str,
                unexpected: list[str]) -> None:
    """Load ``state`` into ``module``; any missing or unexpected key is an error naming ``path``."""
    expected = set(module.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(unexpected) + [prefix + k for k in sorted(set(state) - expected)]
    if missing or unexpected:
        raise ValueError(
            f"{path} is not a CheXbert checkpoint this loader understands: "
            f"missing keys {[prefix + k for k in missing][:5]} ({len(missing)} in all), "
            f"unexpected keys {unexpected[:5]} ({len(unexpected)} in all). Use the public "
            "chexbert.pth of stanfordmlgroup/CheXbert (a dict with 'model_state_dict').")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:  # a tensor of the wrong shape
        raise ValueError(f"{path}: {prefix}* tensors do not fit bert-base + 14 heads: "
                         f"{err}") from err


class ChexbertLabeler:
    """bert-base-uncased + 14 linear heads from the public ``chexbert.pth`` (keys may carry the
    DataParallel ``module.`` prefix); the vocabulary comes from beside it or the HF cache.
    Heads 0-12 predict blank/positive/negative/uncertain for the 13 findings in CheXbert's
    order; head 13 predicts blank/positive for No Finding."""

    tag = "CXB"
    CONDITIONS = (*ABNORMAL, "No Finding")  # the order of CheXbert's heads
    CLASS_VALUES = (NAN, POS, NEG, UNC)

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 16):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"CheXbert checkpoint {self.path} does not exist. Download chexbert.pth from the "
                "CheXbert authors (stanfordmlgroup/CheXbert README) and pass its path, or use the "
                "rule-based labeler (spec=None or 'rule').")
        import torch
        from transformers import BertConfig, BertModel, BertTokenizerFast

        self.torch, self.device, self.batch_size = torch, device, batch_size
        self.tokenizer = self._tokenizer(BertTokenizerFast)
        # weights_only: a third-party pickle must not be able to run code when it is loaded
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        state = state.get("model_state_dict", state)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        self.bert = BertModel(BertConfig(), add_pooling_layer=False)  # defaults = bert-base
        self.heads = torch.nn.ModuleList(torch.nn.Linear(768, 4 if i < 13 else 2)
                                         for i in range(14))
        expected = set(self.bert.state_dict())
        bert = {k.removeprefix("bert."): v for k, v in state.items() if k.startswith("bert.")}
        bert = {k: v for k, v in bert.items() if k not in IGNORED_BERT_KEYS or k in expected}
        heads = {k.removeprefix("linear_heads."): v for k, v in state.items()
                 if k.startswith("linear_heads.")}
        foreign = [k for k in state if not k.startswith(("bert.", "linear_heads."))]
        load_strict(self.bert, bert, self.path, "bert.", foreign)
        load_strict(self.heads, heads, self.path, "linear_heads.", [])
        self.bert.to(device).eval()
        self.heads.to(device).eval()

    def _tokenizer(self, cls: Any) -> Any:
        for candidate in (self.path.parent / "bert-base-uncased", self.path.parent):
            if (candidate / "vocab.txt").is_file():
                return cls.from_pretrained(str(candidate))
        try:
            return cls.from_pretrained("bert-base-uncased", local_files_only=True)
        except OSError as err:
            raise FileNotFoundError(
                f"no bert-base-uncased vocabulary beside {self.path} (expected vocab.txt or a "
                "bert-base-uncased/ folder there) nor in the Hugging Face cache") from err

    def label_reports(self, texts: Iterable[str | None], index: Any = None) -> pd.DataFrame:
        texts = [normalise(t) or "" for t in texts]
        out = np.full((len(texts), 14), NAN)
        with self.torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[i : i + self.batch_size], padding=True,
                                       truncation=True, max_length=512, return_tensors="pt")
                batch = batch.to(self.device)
                cls = self.bert(**batch).last_hidden_state[:, 0]
                for j, head in enumerate(self.heads):
                    pred = head(cls).argmax(-1).cpu().numpy()
                    out[i : i + len(pred), j] = [self.CLASS_VALUES[p] for p in pred]
        frame = pd.DataFrame(out, columns=list(self.CONDITIONS))[list(CHEXPERT_OBSERVATIONS)]
        return frame if index is None else frame.set_axis(pd.Index(index))
