"""Shared parts of the ConTrans and steering stages: states of a concept set, the α sweep
with its perplexity rule, and the random-direction control."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedprivacy import concepts
from fedprivacy.alignment.concept_sets import ConceptSet, encode_texts
from fedprivacy.alignment.stage import perplexity_of


def pair_states(model: PreTrainedModel, tok: PreTrainedTokenizerBase, cs: ConceptSet,
                language: str, split: str, layers: Sequence[int] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-token states of the positives and the negatives of one split: [L, n, d] each."""
    pairs = cs.pairs(language, split)
    if not pairs:
        raise ValueError(f"concept {cs.name!r} has no {split} pairs in language {language!r}")
    pos = concepts.last_token_states(model, tok, [p for p, _ in pairs], layers)
    neg = concepts.last_token_states(model, tok, [n for _, n in pairs], layers)
    return pos, neg


def word_prefixes(texts: Sequence[str], min_words: int = 3) -> list[str]:
    """Every prefix of each text cut at a word boundary (at least ``min_words`` words): the same
    strings for two models with different tokenizers, many last-token states per sentence."""
    out = []
    for text in texts:
        words = text.split()
        out += [" ".join(words[:k]) for k in range(min(min_words, len(words)), len(words) + 1)]
    return list(dict.fromkeys(out))


def random_directions(like: torch.Tensor, draws: int, seed: int) -> list[torch.Tensor]:
    """``draws`` Gaussian directions with the norm of ``like`` (the random-vector control)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(draws):
        v = torch.randn(like.shape, generator=gen, dtype=torch.float64)
        out.append((v / v.norm() * like.double().norm()).to(like.dtype))
    return out


def mean_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each measure that every row has (English-only ones such as ``vader``
    drop out of a mean over languages)."""
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0] if all(k in r for r in rows)}


class Sweep:
    """Measures of one model under steering ``{layer: α·v}``, each (vector, α, language,
    split) evaluated once; perplexity on the language's neutral texts (the utility cost)."""

    def __init__(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, cs: ConceptSet,
                 ppl_texts: int = 200, max_length: int = 64):
        self.model, self.tok, self.cs = model, tok, cs
        self.ppl_texts, self.max_length = ppl_texts, max_length
        self._seen: dict[tuple, dict[str, float]] = {}
        self._neutral: dict[str, dict[str, torch.Tensor]] = {}  # encoded once per language

    def _steering(self, vector: torch.Tensor | None, layer: int, alpha: float):
        if vector is None or alpha == 0:
            return concepts.steered(self.model, {})
        return concepts.steered(self.model, {layer: vector}, alpha)

    def measure(self, name: str, vector: torch.Tensor | None, layer: int, alpha: float,
                language: str, split: str) -> dict[str, float]:
        """The concept's measure and the neutral perplexity of ``language`` with ``name``'s
        vector added at α (α = 0 or no vector: the model as it is)."""
        base = vector is None or alpha == 0
        key = ("base", 0.0, language, split) if base else (name, alpha, language, split)
        if key not in self._seen:
            if language not in self._neutral:
                self._neutral[language] = encode_texts(
                    self.tok, self.cs.data[language].neutral[:self.ppl_texts], self.max_length)
            with self._steering(vector, layer, alpha):
                row = dict(self.cs.measure(self.model, self.tok, language, split))
                row["perplexity"] = perplexity_of(self.model, self._neutral[language], 64)
            self._seen[key] = row
        return self._seen[key]


def choose_alpha(rows: dict[float, dict[str, float]], primary: str, base: dict[str, float],
                 max_ppl_increase: float) -> tuple[float, float]:
    """The α whose dev measure gains most over ``base`` with perplexity ≤ (1 + max increase)
    × the base's (ties: the smaller α); returns (α, gain). α = 0 when none gains."""
    best, gain = 0.0, 0.0
    limit = base["perplexity"] * (1 + max_ppl_increase)
    for alpha in sorted(rows):
        row = rows[alpha]
        delta = row[primary] - base[primary]
        if row["perplexity"] <= limit and delta > gain + 1e-12:
            best, gain = alpha, delta
    return best, gain


def describe_alpha_rule(max_ppl_increase: float) -> str:
    return (f"α maximises the dev gain of the concept's measure with dev perplexity at most "
            f"+{100 * max_ppl_increase:.0f}% over the unsteered model")


def layer_report(accuracy: torch.Tensor) -> list[float]:
    return [round(float(a), 4) for a in accuracy]
