"""The membership attack's AUC against its definition (no model)."""

import itertools

import pytest
import torch

from fedprivacy.privacy.membership import roc_auc

pytestmark = pytest.mark.unit


def slow_auc(members: list[float], nonmembers: list[float]) -> float:
    """Reference: the share of (member, non-member) pairs the member wins, ties half."""
    wins = [1.0 if m > n else 0.5 if m == n else 0.0
            for m, n in itertools.product(members, nonmembers)]
    return sum(wins) / len(wins)


@pytest.mark.parametrize("seed", range(20))
def test_roc_auc_equals_the_pairwise_count_with_ties(seed):
    # Prepare: small integer scores, so ties are frequent
    gen = torch.Generator().manual_seed(seed)
    members = torch.randint(0, 6, (int(torch.randint(1, 9, (1,), generator=gen)),), generator=gen)
    nonmembers = torch.randint(0, 6, (int(torch.randint(1, 30, (1,), generator=gen)),),
                               generator=gen)
    # Execute / Assert
    assert roc_auc(members.float(), nonmembers.float()) == pytest.approx(
        slow_auc(members.tolist(), nonmembers.tolist()), abs=1e-12)


def test_roc_auc_reads_one_half_one_and_zero_where_it_must():
    # Assert: indistinguishable, perfectly separated either way
    assert roc_auc(torch.ones(3), torch.ones(5)) == 0.5
    assert roc_auc(torch.tensor([5.0, 6.0]), torch.tensor([1.0, 2.0, 3.0])) == 1.0
    assert roc_auc(torch.tensor([1.0]), torch.tensor([2.0, 3.0])) == 0.0
    with pytest.raises(ValueError, match="non-members"):
        roc_auc(torch.ones(2), torch.ones(0))
