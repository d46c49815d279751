"""Loss-based membership inference on canaries (Yeom et al. 2018; Carlini et al. 2022 report it
as an ROC AUC): how well a canary's training loss tells the canaries a model was trained on
from unseen canaries of the same format.

    AUC = P(loss(member) < loss(non-member)) + 1/2 P(equal)

over all member/non-member pairs (the Mann-Whitney U statistic divided by n_m n_n): 0.5 when
the model cannot tell them apart, 1.0 when every trained canary has a lower loss than every
unseen one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedprivacy.data.encoding import IGNORE_INDEX, encode_records, iterate_batches
from fedprivacy.data.pii import Canary, canary_record
from fedprivacy.evaluation import token_losses
from fedprivacy.lm import evaluating


def roc_auc(member_scores: torch.Tensor, nonmember_scores: torch.Tensor) -> float:
    """AUC of ``score(member) > score(non-member)``, ties counted half, from the ranks of the
    pooled scores (Mann-Whitney U): O(n log n)."""
    m, n = len(member_scores), len(nonmember_scores)
    if m == 0 or n == 0:
        raise ValueError(f"roc_auc needs members and non-members (got {m} and {n})")
    pooled = torch.cat([member_scores, nonmember_scores]).double()
    order = pooled.argsort()
    ranks = torch.empty_like(pooled)
    ranks[order] = torch.arange(1, m + n + 1, dtype=torch.float64)
    values, inverse = pooled.unique(return_inverse=True)  # ties: their ranks' average
    mean_rank = torch.zeros_like(values).index_add_(0, inverse, ranks)
    mean_rank /= torch.zeros_like(values).index_add_(0, inverse, torch.ones_like(ranks))
    u = mean_rank[inverse[:m]].sum() - m * (m + 1) / 2
    return float(u / (m * n))


@torch.no_grad()
def sentence_losses(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                    canaries: Sequence[Canary], batch_size: int = 32) -> torch.Tensor:
    """Mean next-token loss of each canary sentence as training encodes it: [N]."""
    encoded = encode_records(tokenizer, [canary_record(c) for c in canaries], 10_000)
    out = []
    with evaluating(model):
        for batch in iterate_batches(encoded, batch_size, seed=0, shuffle=False):
            losses = token_losses(model, batch["input_ids"], batch["attention_mask"],
                                  batch["labels"])
            counted = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(1)
            out.append(losses.sum(1) / counted)
    return torch.cat(out)


def membership_auc(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   members: Sequence[Canary], nonmembers: Sequence[Canary]) -> float:
    """The loss attack's AUC: a lower sentence loss says "trained on it"."""
    return roc_auc(-sentence_losses(model, tokenizer, members),
                   -sentence_losses(model, tokenizer, nonmembers))
