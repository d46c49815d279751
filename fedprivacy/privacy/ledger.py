"""The privacy ledger of a model: how much it leaks a client's canaries.

A canary's prefix and secret are cut from the tokenization of the whole canary sentence, so
they are exactly the tokens the model was trained on (`<s>` included).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedprivacy.data.encoding import prompt_ids
from fedprivacy.data.pii import Canary
from fedprivacy.data.tokenizer import digit_token_ids
from fedprivacy.privacy.exposure import (
    exposure_digitwise,
    exposure_exact,
    exposure_extrapolated,
    extraction_rate,
)
from fedprivacy.privacy.membership import membership_auc

EXPOSURE_METHODS = ("auto", "exact", "extrapolated", "digitwise")


def exposure_method(method: str, alphabet_size: int, digits: int, max_candidates: int) -> str:
    """The estimator ``evaluation.exposure`` names for a secret space of alphabet_size^digits.

    ``auto`` enumerates the space exactly when it holds at most ``max_candidates`` strings
    (``evaluation.exposure_max_candidates``), else takes Carlini et al.'s skew-normal estimate
    over the whole space (the digit-wise approximation, which can under-report by many bits,
    is reported beside it in any case).
    """
    if method not in EXPOSURE_METHODS:
        raise ValueError(f"evaluation.exposure: unknown method {method!r}; "
                         f"choose one of {list(EXPOSURE_METHODS)}")
    if max_candidates < 1:
        raise ValueError(f"evaluation.exposure_max_candidates: must be >= 1 (got {max_candidates})")
    if method != "auto":
        return method
    return "exact" if alphabet_size**digits <= max_candidates else "extrapolated"


def canary_token_ids(tokenizer: PreTrainedTokenizerBase, canary: Canary
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(prefix ids, secret ids) of a canary as it is tokenized in the training text."""
    enc = tokenizer(canary.text, add_special_tokens=False, return_offsets_mapping=True)
    start, end = canary.span
    inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < end and start < b]
    if not inside or inside != list(range(inside[0], inside[0] + len(canary.secret))):
        raise ValueError(f"canary {canary.id}: its secret is not one token per digit "
                         "under this tokenizer")
    ids = enc["input_ids"]
    prefix = prompt_ids(tokenizer, "")  # `<s>` where the tokenizer has one
    return (torch.tensor(prefix + ids[:inside[0]]), torch.tensor([ids[i] for i in inside]))


def canary_leakage(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   canaries: Sequence[Canary], method: str = "auto",
                   num_samples: int = 2000, seed: int = 0,
                   max_candidates: int = 1_000_000,
                   nonmembers: Sequence[Canary] = ()) -> dict[str, float | list[float]]:
    """Exposure of each canary (Carlini et al. 2019), its mean, DEPN's digit-wise exposure
    (``exposure_digitwise``, the paper's measure), the greedy extraction rate and, given
    ``nonmembers`` (unseen canaries of the same format), the loss attack's ``mia_auc``.

    ``method`` (`exposure_method`): ``auto``, ``exact`` (rank among all 10^n candidates),
    ``extrapolated`` (skew-normal fit on ``num_samples`` sampled candidates) or ``digitwise``
    (DEPN's digit-by-digit rank: an approximation that under-reports). ``exposure_exact`` is
    1.0 when the figures come from full enumeration and 0.0 when they are an estimate.
    """
    pairs = [canary_token_ids(tokenizer, c) for c in canaries]
    prefixes = [p for p, _ in pairs]
    secrets = torch.stack([s for _, s in pairs])
    digits = torch.tensor(digit_token_ids(tokenizer))
    method = exposure_method(method, len(digits), secrets.shape[1], max_candidates)
    if method == "exact":
        exposure = exposure_exact(model, prefixes, secrets, digits)
    elif method == "extrapolated":
        exposure = exposure_extrapolated(model, prefixes, secrets, digits, num_samples, seed)
    else:
        exposure = exposure_digitwise(model, prefixes, secrets, digits)
    digitwise = exposure if method == "digitwise" else exposure_digitwise(model, prefixes,
                                                                            secrets, digits)
    values = [float(e) for e in exposure]
    out: dict[str, float | list[float]] = {
        "exposure": values, "exposure_mean": sum(values) / len(values),
        "exposure_exact": float(method == "exact"),
        "exposure_digitwise": float(digitwise.mean()),
        "extraction_rate": extraction_rate(model, prefixes, secrets)}
    if nonmembers:
        out["mia_auc"] = membership_auc(model, tokenizer, canaries, nonmembers)
    return out
