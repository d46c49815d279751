"""Per-token privacy likelihood p_t in [0, 1]: the pluggable detector of swing distillation.

A detector maps a batch (``input_ids`` [N, T], ``attention_mask`` [N, T], optionally the known
``private_mask`` [N, T] and the texts) to a float tensor [N, T]; padding gets 0. Three kinds:
known private spans, regular expressions for PII on the text, and a model's memorisation score.
``DETECTORS`` names them for ``client.swing.detector``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedprivacy.lm import IGNORE_INDEX, evaluating, lm_logits, token_nll


class PrivacyDetector(Protocol):
    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        private_mask: torch.Tensor | None = None,
        texts: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Likelihood that each token is private, [N, T] in [0, 1]."""
        ...


class SpanDetector:
    """Known private spans: p_t = 1 within ``margin`` tokens of a private token, else 0."""

    def __init__(self, margin: int = 0) -> None:
        if margin < 0:
            raise ValueError(f"SpanDetector margin must be >= 0, got {margin}")
        self.margin = margin

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        private_mask: torch.Tensor | None = None,
        texts: Sequence[str] | None = None,
    ) -> torch.Tensor:
        if private_mask is None:
            raise ValueError("SpanDetector needs private_mask (the known private tokens)")
        p = private_mask.float()
        if self.margin:
            width = 2 * self.margin + 1
            p = F.max_pool1d(p.unsqueeze(1), width, stride=1, padding=self.margin).squeeze(1)
        return p * attention_mask


DEFAULT_PATTERNS: dict[str, str] = {
    "email": r"[\w.+-]+ ?@ ?[\w-]+(?: ?\. ?[\w-]+)+",
    "phone": r"\+?\(?\d(?:[ ().-]{0,2}\d){6,14}",
    "digits": r"\d(?: ?\d){3,}",
    "name": r"\b[A-Z][a-z]+(?: [A-Z][a-z]+)+\b",
}
"""This project's PII patterns: emails, phone numbers, runs of >= 4 digits (digits may be
space-separated, as DEPN writes them), and names as two or more capitalised words."""


class PatternDetector:
    """Regex PII on the text: p_t = 1 for tokens whose characters overlap a match, else 0.

    The text of a row is ``texts[i]`` or the decoded tokens; it is re-tokenised with offsets,
    and must give back the row's non-special tokens, so that matches map onto token positions.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, patterns: Mapping[str, str] | None = None) -> None:
        self.tokenizer = tokenizer
        self.patterns = [re.compile(rx) for rx in (patterns or DEFAULT_PATTERNS).values()]

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        private_mask: torch.Tensor | None = None,
        texts: Sequence[str] | None = None,
    ) -> torch.Tensor:
        special = torch.tensor(self.tokenizer.all_special_ids, dtype=input_ids.dtype, device=input_ids.device)
        keep = attention_mask.bool() & ~torch.isin(input_ids, special)
        out = torch.zeros(input_ids.shape, device=input_ids.device)
        for i in range(len(input_ids)):
            positions = keep[i].nonzero().squeeze(1)
            ids = input_ids[i, positions].tolist()
            text = texts[i] if texts is not None else self.tokenizer.decode(ids)
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            if enc["input_ids"] != ids:
                raise ValueError(
                    f"PatternDetector: tokenising the text of row {i} does not give back its tokens; "
                    "pass texts= with the exact text of each row"
                )
            spans = [m.span() for rx in self.patterns for m in rx.finditer(text)]
            for k, (start, end) in enumerate(enc["offset_mapping"]):
                if any(start < b and a < end for a, b in spans):
                    out[i, positions[k]] = 1.0
        return out


class ModelScoreDetector:
    """Memorisation score: p_t = sigmoid((l_ref,t - l_model,t - threshold) / scale).

    l_t = -log p(x_t | x_<t) under ``model`` (e.g. the teacher) and ``reference`` (a model not
    trained on the private data): tokens the model predicts far better than the reference are
    likely memorised. threshold = 2 nats and scale = 0.5 are this project's defaults. The first
    token and padding get 0.
    """

    def __init__(
        self, model: nn.Module, reference: nn.Module, threshold: float = 2.0, scale: float = 0.5, batch_size: int = 64
    ) -> None:
        self.model, self.reference = model, reference
        self.threshold, self.scale, self.batch_size = threshold, scale, batch_size

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        private_mask: torch.Tensor | None = None,
        texts: Sequence[str] | None = None,
    ) -> torch.Tensor:
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        gaps = []
        with evaluating(self.model), evaluating(self.reference):
            for start in range(0, len(input_ids), self.batch_size):
                rows = slice(start, start + self.batch_size)
                ids, mask, lab = input_ids[rows], attention_mask[rows], labels[rows]
                gaps.append(
                    token_nll(lm_logits(self.reference, ids, mask), lab)
                    - token_nll(lm_logits(self.model, ids, mask), lab)
                )
        p = torch.sigmoid((torch.cat(gaps) - self.threshold) / self.scale)
        return F.pad(p, (1, 0)) * attention_mask


DETECTORS: dict[str, type] = {
    "span": SpanDetector,
    "pattern": PatternDetector,
    "model_score": ModelScoreDetector,
}
