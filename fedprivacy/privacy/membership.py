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

from fedprivacy.data.encoding import encode_records
from fedprivacy.data.pii import Canary, canary_record
from fedprivacy.evaluation import row_losses


def roc_auc(member_scores: torch.Tensor, nonmember_scores: torch.Tensor) -> float:
    """AUC of ``score(member) > score(non-member)``, ties counted half: for each member, the
    non-members below it plus half those equal to it, by binary search in the sorted
    non-member scores (the Mann-Whitney U): O((m + n) log n)."""
    m, n = len(member_scores), len(nonmember_scores)
    if m == 0 or n == 0:
        raise ValueError(f"roc_auc needs members and non-members (got {m} and {n})")
    ordered = nonmember_scores.double().sort().values
    members = member_scores.double()
    below = torch.searchsorted(ordered, members, right=False)
    at_most = torch.searchsorted(ordered, members, right=True)
    return int((below + at_most).sum()) / (2 * m * n)


def sentence_losses(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                    canaries: Sequence[Canary], batch_size: int = 32) -> torch.Tensor:
    """Mean next-token loss of each canary sentence as training encodes it: [N]."""
    encoded = encode_records(tokenizer, [canary_record(c) for c in canaries], 10_000)
    sums, counts = row_losses(model, encoded, batch_size)
    return sums / counts


def membership_auc(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   members: Sequence[Canary], nonmembers: Sequence[Canary]) -> float:
    """The loss attack's AUC: a lower sentence loss says "trained on it"."""
    return roc_auc(-sentence_losses(model, tokenizer, members),
                   -sentence_losses(model, tokenizer, nonmembers))
