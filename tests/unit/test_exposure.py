"""Exposure estimators on model-free next-token tables (no transformer, milliseconds)."""

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import DynamicCache

from fedprivacy.data.encoding import left_padded
from fedprivacy.lm import position_ids, sequence_perplexity
from fedprivacy.privacy import exposure as ex
from fedprivacy.privacy.ledger import exposure_method

pytestmark = pytest.mark.unit

DIGITS = torch.arange(10, 20)


def toy_cache(past: DynamicCache | None, input_ids: torch.Tensor) -> DynamicCache:
    """A real KV cache holding one zero key/value per token (the toy models need no state)."""
    cache = past if past is not None else DynamicCache()
    zeros = torch.zeros(input_ids.shape[0], 1, input_ids.shape[1], 1)
    cache.update(zeros, zeros, 0)
    return cache


class Bigram(nn.Module):
    """Next-token logits from the current token only: logits[t] = table[input_ids[t]]."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, **_):
        return SimpleNamespace(logits=self.table[input_ids],
                               past_key_values=toy_cache(past_key_values, input_ids))


class Positional(nn.Module):
    """Next-token logits from the position only: logits[t] = table[position_ids[t]]."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, **_):
        return SimpleNamespace(logits=self.table[position_ids],
                               past_key_values=toy_cache(past_key_values, input_ids))


def slow_exact_exposure(model, prefix, secret, alphabet):
    """Reference: score every candidate on its own, count those scoring <= the secret."""
    def score(cand):
        ids = torch.cat([prefix, torch.tensor(cand)]).unsqueeze(0)
        pos = torch.arange(len(ids[0])).unsqueeze(0)
        logp = model(input_ids=ids, position_ids=pos).logits[0].log_softmax(-1)
        return -sum(logp[len(prefix) - 1 + i, tok].item() for i, tok in enumerate(cand))

    candidates = itertools.product(alphabet.tolist(), repeat=len(secret))
    scores = {cand: score(cand) for cand in candidates}
    mine = scores[tuple(secret.tolist())]
    rank = sum(value <= mine for value in scores.values())
    return len(secret) * math.log2(len(alphabet)) - math.log2(rank)


def test_exact_matches_candidate_by_candidate_reference():
    # Prepare: a random bigram table, three canaries with prefixes of different lengths
    torch.manual_seed(0)
    model = Bigram(torch.randn(24, 24) * 3)
    prefixes = [torch.tensor([1, 2, 3]), torch.tensor([4]), torch.tensor([5, 6, 7, 8, 9])]
    secrets = torch.tensor([[11, 12, 13], [19, 19, 10], [15, 14, 13]])
    # Execute
    fast = ex.exposure_exact(model, prefixes, secrets, DIGITS, batch_size=37)
    slow = [slow_exact_exposure(model, p, s, DIGITS) for p, s in zip(prefixes, secrets)]
    # Assert
    assert fast.tolist() == pytest.approx(slow, abs=1e-9)


def test_digitwise_equals_exact_when_positions_order_candidates():
    # Prepare: -log p of digit a at secret position i = rank_i(a) * 10^(n-1-i) + const, so the
    # candidates' log-perplexities sort lexicographically by per-position ranks
    torch.manual_seed(1)
    n, prefix_len = 4, 3
    table = torch.zeros(prefix_len + n, 24)
    for i in range(n):
        ranks = torch.randperm(10).float()
        table[prefix_len - 1 + i, DIGITS] = -ranks * 10 ** (n - 1 - i)
        table[prefix_len - 1 + i, :10] = -1e4
        table[prefix_len - 1 + i, 20:] = -1e4
    model = Positional(table)
    prefixes = [torch.tensor([1, 2, 3])] * 3
    secrets = DIGITS[torch.randint(10, (3, n))]
    # Execute
    exact = ex.exposure_exact(model, prefixes, secrets, DIGITS)
    digitwise = ex.exposure_digitwise(model, prefixes, secrets, DIGITS)
    # Assert
    assert digitwise.tolist() == pytest.approx(exact.tolist(), abs=1e-9)
    assert exact.max() > 0


def test_digitwise_matches_loop_composition():
    # Prepare
    torch.manual_seed(2)
    model = Bigram(torch.randn(24, 24))
    prefixes = [torch.tensor([1, 2]), torch.tensor([3, 4, 5])]
    secrets = torch.tensor([[12, 17, 10, 19], [14, 14, 11, 15]])
    # Execute
    fast = ex.exposure_digitwise(model, prefixes, secrets, DIGITS)
    # Assert: Rank = 1 + sum_i r_i 10^(n-1-i), r_i counted one digit at a time
    for value, prefix, secret in zip(fast.tolist(), prefixes, secrets):
        rank = 1
        for i in range(4):
            ids = torch.cat([prefix, secret[:i]])
            logits = model(input_ids=ids.unsqueeze(0)).logits[0, -1, DIGITS]
            true = logits[int(secret[i]) - 10]
            rank += (int((logits >= true).sum()) - 1) * 10 ** (3 - i)
        assert value == pytest.approx(4 * math.log2(10) - math.log2(rank))


def test_extrapolated_agrees_with_exact_on_small_space():
    # Prepare: |R| = 10^4, secrets spread over the score distribution
    torch.manual_seed(3)
    model = Bigram(torch.randn(24, 24))
    prefixes = [torch.tensor([1])] * 4
    secrets = DIGITS[torch.randint(10, (4, 4))]
    # Execute
    exact = ex.exposure_exact(model, prefixes, secrets, DIGITS)
    extrapolated = ex.exposure_extrapolated(model, prefixes, secrets, DIGITS, num_samples=2000,
                                            seed=0)
    # Assert
    assert extrapolated.tolist() == pytest.approx(exact.tolist(), abs=0.5)


def test_indistinguishable_candidates_have_zero_exposure():
    # Prepare: a model with the same distribution everywhere
    model = Bigram(torch.zeros(24, 24))
    prefixes, secrets = [torch.tensor([1, 2])], torch.tensor([[13, 13, 17]])
    # Execute
    exact = ex.exposure_exact(model, prefixes, secrets, DIGITS)
    digitwise = ex.exposure_digitwise(model, prefixes, secrets, DIGITS)
    # Assert: ties count against the canary
    assert exact.item() == pytest.approx(0.0)
    assert digitwise.item() == pytest.approx(0.0)


def test_secret_outside_alphabet_is_rejected():
    # Prepare
    model = Bigram(torch.zeros(24, 24))
    # Execute / Assert
    with pytest.raises(ValueError, match="candidate_token_ids"):
        ex.exposure_digitwise(model, [torch.tensor([1])], torch.tensor([[3, 12]]), DIGITS)


def test_sequence_perplexity_and_token_nll_match_manual_computation():
    # Prepare: right-padded rows, one ignored label
    torch.manual_seed(4)
    model = Bigram(torch.randn(24, 24))
    ids = torch.tensor([[1, 5, 7, 9], [2, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    labels = torch.tensor([[-100, 5, -100, 9], [-100, 3, -100, -100]])
    # Execute
    ppl = sequence_perplexity(model, ids, mask, labels, batch_size=1)
    # Assert
    logp = model.table.log_softmax(-1)
    row0 = -(logp[1, 5] + logp[7, 9]) / 2
    row1 = -logp[2, 3]
    assert ppl.tolist() == pytest.approx([math.exp(row0), math.exp(row1)], rel=1e-5)


def test_left_pad_and_positions():
    # Prepare
    seqs = [torch.tensor([4, 5, 6]), torch.tensor([7])]
    # Execute
    ids, mask = left_padded(seqs, 0)
    pos = position_ids(mask)
    # Assert
    assert ids.tolist() == [[4, 5, 6], [0, 0, 7]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]


def test_extraction_rate_counts_exact_greedy_reproductions():
    # Prepare: a bigram chain 1 -> 11 -> 12 -> 13 and 2 -> 14 -> 15 -> 19
    table = torch.zeros(24, 24)
    for a, b in [(1, 11), (11, 12), (12, 13), (2, 14), (14, 15), (15, 16)]:
        table[a, b] = 10.0
    model = Bigram(table)
    prefixes = [torch.tensor([5, 1]), torch.tensor([2])]
    secrets = torch.tensor([[11, 12, 13], [14, 15, 19]])
    # Execute
    rate = ex.extraction_rate(model, prefixes, secrets)
    # Assert
    assert rate == pytest.approx(0.5)


def confident_after_runner_up_table(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A bigram table where digit-wise exposure misses a memorised secret, and that secret.

    After the prefix, digit 10 is a hair more likely than the secret's first digit 11; after
    10 every digit is equally likely, while 11 -> 12 -> 13 ... is near-certain. The secret
    11 12 13 ... is the single most likely candidate (rank 1), but digit-wise it ranks
    1 + 1 * 10^(n-1), behind every string starting with 10.
    """
    table = torch.full((24, 24), -30.0)
    table[:, DIGITS] = 0.0
    table[1, 10], table[1, 11] = 10.0, 9.9
    for a in range(11, 11 + n - 1):
        table[a, a + 1] = 30.0
    return table, torch.arange(11, 11 + n).unsqueeze(0)


def test_digitwise_under_reports_a_memorised_secret():
    # Prepare
    n = 4
    table, secret = confident_after_runner_up_table(n)
    model, prefixes = Bigram(table), [torch.tensor([1])]
    # Execute
    exact = ex.exposure_exact(model, prefixes, secret, DIGITS).item()
    digitwise = ex.exposure_digitwise(model, prefixes, secret, DIGITS).item()
    # Assert: exact = log2 10^4 (rank 1 of 10^4, 13.3 bits); digit-wise rank 1001 (3.3 bits)
    assert exact == pytest.approx(n * math.log2(10))
    assert digitwise == pytest.approx(n * math.log2(10) - math.log2(1 + 10 ** (n - 1)))
    assert exact - digitwise > 9.9


def test_exact_with_candidate_tree_cut_matches_full_enumeration():
    # Prepare: a peaked random bigram table (many branches score above the secrets)
    torch.manual_seed(5)
    model = Bigram(torch.randn(24, 24) * 4)
    prefixes = [torch.tensor([1, 2]), torch.tensor([3])]
    secrets = torch.tensor([[11, 12, 13, 14], [19, 10, 15, 15]])
    # Execute
    cut = ex.exposure_exact(model, prefixes, secrets, DIGITS, batch_size=7)
    full = [slow_exact_exposure(model, p, s, DIGITS) for p, s in zip(prefixes, secrets)]
    # Assert
    assert cut.tolist() == pytest.approx(full, abs=1e-9)


@pytest.mark.parametrize(("method", "digits", "max_candidates", "chosen"), [
    ("auto", 6, 10**6, "exact"),
    ("auto", 7, 10**6, "extrapolated"),
    ("auto", 5, 10**5, "exact"),
    ("auto", 6, 10**6 - 1, "extrapolated"),
    ("digitwise", 3, 10**6, "digitwise"),
    ("exact", 8, 10, "exact"),
    ("extrapolated", 4, 10**6, "extrapolated"),
])
def test_auto_exposure_enumerates_whenever_the_space_fits(method, digits, max_candidates, chosen):
    # Execute / Assert
    assert exposure_method(method, 10, digits, max_candidates) == chosen


def test_exposure_settings_are_checked_naming_the_key():
    # Execute / Assert
    with pytest.raises(ValueError, match="evaluation.exposure:"):
        exposure_method("rankwise", 10, 4, 10**6)
    with pytest.raises(ValueError, match="evaluation.exposure_max_candidates"):
        exposure_method("auto", 10, 4, 0)
