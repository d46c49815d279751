"""Generic LM helpers on model-free next-token tables: eval mode, scoring, decoding."""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fedprivacy import lm

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


class Bigram(nn.Module):
    """Next-token logits from the current token only: logits[t] = table[input_ids[t]]."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table)
        self.head = nn.Linear(2, 2)
        self.inner = nn.Dropout(0.5)

    def forward(self, input_ids, attention_mask=None, position_ids=None, **_):
        return SimpleNamespace(logits=self.table[input_ids], past_key_values=None)


def chain(pairs: list[tuple[int, int]], size: int = 12) -> Bigram:
    """A bigram model that follows a -> b with near certainty."""
    table = torch.zeros(size, size)
    for a, b in pairs:
        table[a, b] = 20.0
    return Bigram(table)


def test_evaluating_restores_every_submodule_mode_and_gradients():
    # Prepare: a training model with one submodule left in eval mode, one frozen parameter
    model = Bigram(torch.zeros(4, 4))
    model.train()
    model.inner.eval()
    model.head.bias.requires_grad_(False)
    before = [m.training for m in model.modules()]

    # Execute
    with lm.evaluating(model):
        inside = ([m.training for m in model.modules()], torch.is_grad_enabled())
    with lm.evaluating(model, gradients=True):
        frozen = [p.requires_grad for p in model.parameters()]
        grad_inside = torch.is_grad_enabled()

    # Assert
    assert inside == ([False] * len(before), False)
    assert frozen == [False, False, False] and grad_inside
    assert [m.training for m in model.modules()] == before == [True, True, False]
    assert [p.requires_grad for p in model.parameters()] == [True, True, False]


def test_evaluating_restores_on_exception_and_forks_a_seeded_rng():
    # Prepare
    model = Bigram(torch.zeros(4, 4)).train()
    torch.manual_seed(5)
    state = torch.get_rng_state()

    # Execute
    with pytest.raises(RuntimeError, match="boom"):
        with lm.evaluating(model, gradients=True, seed=1):
            raise RuntimeError("boom")
    with lm.evaluating(model, seed=3):
        first = torch.rand(3)
    with lm.evaluating(model, seed=3):
        second = torch.rand(3)

    # Assert
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert torch.equal(first, second)
    assert torch.equal(torch.get_rng_state(), state)


def test_generate_ids_greedy_stops_at_eos_and_pads_after_it():
    # Prepare: 1 -> 5 -> 6 -> 2 (eos) and 3 -> 7 -> 7 -> ...; pad 0
    model = chain([(1, 5), (5, 6), (6, 2), (3, 7), (7, 7), (2, 9)])
    prompts = [torch.tensor([4, 1]), torch.tensor([3])]

    # Execute
    plain = lm.generate_ids(model, prompts, 5, batch_size=1)
    stopped = lm.generate_ids(model, prompts, 5, pad_id=0, eos_id=2)
    early = lm.generate_ids(model, [torch.tensor([1])], 6, pad_id=0, eos_id=2)

    # Assert
    assert plain.tolist() == [[5, 6, 2, 9, 0], [7, 7, 7, 7, 7]]
    assert stopped.tolist() == [[5, 6, 2, 0, 0], [7, 7, 7, 7, 7]]
    assert early.tolist() == [[5, 6, 2, 0, 0, 0]]


def test_generate_ids_sampling_uses_the_global_rng_and_top_p():
    # Prepare: after token 1 two tokens share almost all mass, 4 slightly more than 5
    table = torch.full((8, 8), -30.0)
    table[:, 4], table[:, 5] = 0.2, 0.0
    model = Bigram(table)
    prompts = [torch.tensor([1])] * 64

    # Execute
    torch.manual_seed(0)
    first = lm.generate_ids(model, prompts, 3, do_sample=True)
    torch.manual_seed(0)
    second = lm.generate_ids(model, prompts, 3, do_sample=True)
    nucleus = lm.generate_ids(model, prompts, 3, do_sample=True, top_p=0.4)

    # Assert
    assert torch.equal(first, second)
    assert set(first.flatten().tolist()) == {4, 5}
    assert set(nucleus.flatten().tolist()) == {4}


def test_generate_ids_rejects_empty_prompts():
    # Prepare
    model = chain([(1, 2)])

    # Execute / Assert
    with pytest.raises(ValueError, match="at least one token"):
        lm.generate_ids(model, [torch.tensor([1]), torch.tensor([], dtype=torch.long)], 2)


def test_score_completions_matches_the_table_with_right_padding():
    # Prepare
    torch.manual_seed(0)
    model = Bigram(torch.randn(10, 10))
    pairs = [([1, 2, 3], [4, 5]), ([6], [7]), ([8, 9], [])]

    # Execute
    scored = lm.score_completions(model, pairs, pad_id=0, batch_size=2,
                                  token_stat=lambda step: step.max(-1).values)

    # Assert: token c_i is predicted by the logits of the token before it
    logp = model.table.detach().double().log_softmax(-1)
    assert scored[0].logprobs.tolist() == pytest.approx([logp[3, 4].item(), logp[4, 5].item()])
    assert scored[1].logprobs.tolist() == pytest.approx([logp[6, 7].item()])
    assert scored[2].logprobs.numel() == 0 and scored[2].stat.numel() == 0
    table = model.table.detach().double()
    assert scored[0].stat.tolist() == pytest.approx([table[3].max().item(), table[4].max().item()])
    assert scored[0].logprobs.dtype == torch.float64


def test_score_completions_needs_a_prompt():
    # Prepare
    model = Bigram(torch.zeros(4, 4))

    # Execute / Assert
    with pytest.raises(ValueError, match="non-empty prompt"):
        lm.score_completions(model, [([], [1])], pad_id=0)


def test_pad_token_id_falls_back_to_eos_and_names_the_problem():
    # Prepare
    with_pad = SimpleNamespace(pad_token_id=3, eos_token_id=2)
    eos_only = SimpleNamespace(pad_token_id=None, eos_token_id=2)
    neither = SimpleNamespace(pad_token_id=None, eos_token_id=None)

    # Execute / Assert
    assert lm.pad_token_id(with_pad) == 3
    assert lm.pad_token_id(eos_only) == 2
    with pytest.raises(ValueError, match="pad or end-of-sequence"):
        lm.pad_token_id(neither)


def test_ignore_index_literal_is_written_once_in_the_library():
    # Prepare
    literal = re.compile(r"(?<![\w.])-100(?![\w.])")
    files = [f for d in ("fedprivacy", "clients", "strategies") for f in (ROOT / d).rglob("*.py")]

    # Execute
    hits = [(f.relative_to(ROOT).as_posix(), n) for f in files
            for n, line in enumerate(f.read_text().splitlines(), 1) if literal.search(line)]

    # Assert
    assert len(hits) == 1 and hits[0][0] == "fedprivacy/data/encoding.py", hits
    assert lm.IGNORE_INDEX == -100
