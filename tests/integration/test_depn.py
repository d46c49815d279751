"""DEPN on tiny models: detection against a slow reference, and editing that forgets a secret."""

import math

import pytest
import torch
import transformers as tf

from fedprivacy import attribution, editing, sites
from fedprivacy.privacy import depn
from tests.tiny import tiny_llama

pytestmark = pytest.mark.integration

VOCAB, LENGTH, PREFIX = 32, 10, 4


def llama(initializer_range: float = 0.02) -> tf.PreTrainedModel:
    return tiny_llama(VOCAB, initializer_range)


@pytest.fixture(scope="module")
def memorised():
    """A tiny LLaMA trained for 40 steps on three secrets (prefix "1 2 3 key", then 6 private
    tokens) among random filler, so that it memorises them."""
    model = llama()
    generator = torch.Generator().manual_seed(1)
    secrets = torch.randint(10, VOCAB, (3, LENGTH), generator=generator)
    secrets[:, :PREFIX] = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 6]])
    private = torch.zeros_like(secrets, dtype=torch.bool)
    private[:, PREFIX:] = True
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        filler = torch.randint(0, VOCAB, (12, LENGTH), generator=generator)
        batch = torch.cat([secrets, secrets, filler])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), secrets, private


def private_probability(model, secrets, private) -> float:
    """Mean P(private token | its prefix) over the secrets."""
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=secrets).logits[:, :-1], -1)
    token_probs = probs.gather(-1, secrets[:, 1:, None])[..., 0]
    return token_probs[private[:, 1:]].mean().item()


def reference_scores(model, ids, private, steps, mask_token_id=None) -> torch.Tensor:
    """Eq. 3–5 literally: per private token, layer and step, one forward/backward."""
    layers = sites.num_layers(model)
    total = torch.zeros(layers, sites.ffn_dim(model), dtype=torch.float64)
    for t in private.nonzero().flatten().tolist():
        inputs, position = ids.clone(), t
        if mask_token_id is None:
            position = t - 1
        else:
            inputs[t] = mask_token_id
        for layer in range(layers):
            end = attribution.ffn_activations(model, inputs, layer, position)
            for k in range(steps):
                point = (k / steps * end).requires_grad_(True)
                with attribution.patch_ffn(model, layer, position, point):
                    logits = model(input_ids=inputs[None]).logits[0, position]
                (grad,) = torch.autograd.grad(torch.softmax(logits, -1)[ids[t]], point)
                total[layer] += end / steps * grad
    return total


@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_record_scores_match_slow_reference(kind):
    # Prepare: untrained models with a large init so that gradients are not tiny
    if kind == "causal":
        model, mask_token_id = llama(0.3).double().eval(), None
    else:
        torch.manual_seed(0)
        config = tf.BertConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, initializer_range=0.3,
        )
        model, mask_token_id = tf.BertForMaskedLM(config).double().eval(), 0
    ids = torch.tensor([1, 2, 3, 4, 17, 9, 25, 11])
    private = torch.tensor([0, 0, 0, 0, 1, 1, 0, 1], dtype=torch.bool)

    # Execute
    scores = depn.record_scores(model, ids, private, steps=4, mask_token_id=mask_token_id)
    expected = reference_scores(model, ids, private, 4, mask_token_id)

    # Assert
    assert expected.abs().max() > 1e-4
    torch.testing.assert_close(scores, expected.float(), rtol=1e-4, atol=1e-8)
    chosen = [(layer, i) for layer, i, _ in depn.select_candidates(scores, [0, 1])]
    assert chosen == [(layer, i) for layer, i, _ in depn.select_candidates(expected.float(), [0, 1])]


@pytest.fixture(scope="module")
def detected(memorised):
    model, secrets, private = memorised
    return depn.detect_privacy_neurons(model, secrets, private, top_z=8)


def test_detection_is_bounded_and_ranked(detected):
    # Prepare: the detection of the fixture (top 8)

    # Execute
    everything = depn.aggregate(detected.candidates, top_z=10_000)

    # Assert
    assert len(detected.neurons) == 8 and len(set(detected.neurons)) == 8
    assert len(detected.candidates) == 3
    for record in detected.candidates:
        top = record[0][2]
        assert all(score >= 0.1 * top for _, _, score in record)
    votes = [detected.votes[n] for n in detected.neurons]
    assert votes == sorted(votes, reverse=True)
    assert set(everything.neurons) == set(detected.votes)
    assert detected.neurons == everything.neurons[:8]


def test_padding_does_not_change_detection(memorised, detected):
    # Prepare: left-pad two records and right-pad one
    model, secrets, private = memorised
    pad = torch.zeros(3, 2, dtype=torch.long)
    ids = torch.cat([pad, secrets], 1)
    ids[1] = torch.cat([secrets[1], pad[1]])
    mask = torch.cat([pad, torch.ones_like(secrets)], 1)
    mask[1] = torch.cat([torch.ones_like(secrets[1]), pad[1]])
    padded_private = torch.cat([pad.bool(), private], 1)
    padded_private[1] = torch.cat([private[1], pad[1].bool()])

    # Execute
    padded = depn.detect_privacy_neurons(model, ids, padded_private, mask, top_z=8)

    # Assert
    assert padded.neurons == detected.neurons


def test_zeroing_privacy_neurons_forgets_more_than_random(memorised, detected):
    # Prepare
    model, secrets, private = memorised
    z, total = 8, sites.num_layers(model) * sites.ffn_dim(model)
    before = private_probability(model, secrets, private)
    random_drops = []
    for seed in range(10):
        flat = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:z].tolist()
        neurons: dict[int, list[int]] = {}
        for f in flat:
            neurons.setdefault(f // sites.ffn_dim(model), []).append(f % sites.ffn_dim(model))
        handle = editing.scale_neurons(model, neurons, 0.0)
        random_drops.append(before - private_probability(model, secrets, private))
        handle.undo()

    # Execute
    handle, found = depn.depn(model, secrets, private, top_z=z)
    after = private_probability(model, secrets, private)
    handle.undo()

    # Assert: detection is deterministic, and the privacy neurons hold the secrets
    assert found.neurons == detected.neurons and found.votes == detected.votes
    assert before > 0.8, "the tiny model did not memorise the secrets"
    assert before - after > max(random_drops)
    assert before - after > 3 * sum(random_drops) / len(random_drops)
    assert private_probability(model, secrets, private) == before


def test_apply_depn_zeroes_and_records(memorised):
    # Prepare
    model, secrets, private = memorised
    found = depn.PrivacyNeurons(neurons=[(1, 7), (0, 3), (1, 2)])

    # Execute
    handle = depn.apply_depn(model, found)
    record = editing.recorded_edits(model)
    zeroed = [
        torch.count_nonzero(sites.ffn(model, layer).weight[:, index]).item()
        for layer, index in found.neurons
    ]
    handle.undo()

    # Assert
    assert found.by_layer() == {1: [7, 2], 0: [3]}
    assert zeroed == [0, 0, 0]
    assert record == [
        {"layer": 1, "indices": [2, 7], "factor": 0.0},
        {"layer": 0, "indices": [3], "factor": 0.0},
    ]


def test_aggregate_votes_then_scores():
    # Prepare
    candidates = [
        [(0, 1, 5.0), (1, 2, 1.0)],
        [(1, 2, 3.0), (0, 4, 2.0)],
        [(0, 4, 0.5), (1, 2, 0.5), (0, 1, 0.1)],
    ]

    # Execute
    found = depn.aggregate(candidates, top_z=2)

    # Assert: (1, 2) has 3 votes; (0, 1) and (0, 4) two each, (0, 1) with the larger sum
    assert found.neurons == [(1, 2), (0, 1)]
    assert found.votes == {(0, 1): 2, (1, 2): 3, (0, 4): 2}


def test_masked_lm_needs_mask_token():
    # Prepare
    model = tf.BertForMaskedLM(
        tf.BertConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=4,
        )
    )

    # Execute / Assert
    with pytest.raises(ValueError, match="mask_token_id"):
        depn.record_scores(model, torch.tensor([1, 2, 3]), torch.tensor([0, 1, 0]))


def test_resampled_record_replaces_only_private_tokens_by_other_pool_tokens():
    # Prepare
    ids = torch.tensor([1, 2, 3, 4, 17, 9, 25, 11])
    private = torch.tensor([0, 0, 0, 0, 1, 1, 0, 1], dtype=torch.bool)
    pool = torch.tensor([9, 11, 17, 20, 21])

    # Execute
    out = [depn.resampled_record(ids, private, pool, torch.Generator().manual_seed(s)) for s in range(20)]

    # Assert
    for row in out:
        assert torch.equal(row[~private], ids[~private])
        assert all(int(row[t]) in pool.tolist() and row[t] != ids[t] for t in (4, 5, 7))
    assert len({tuple(row.tolist()) for row in out}) > 1
    lone = depn.resampled_record(ids, private, torch.tensor([17]), torch.Generator())
    assert lone[4] == 17 and lone[5] == 17  # the pool's only token, kept where it is the token


def test_contrast_subtracts_the_counterfactuals_attribution_as_the_reference_does(memorised):
    # Prepare
    model, secrets, private = memorised
    pool = torch.arange(10, VOCAB)
    drawn = torch.Generator().manual_seed(3)
    expected = []
    for ids, mask in zip(secrets, private):
        counterfactual = depn.resampled_record(ids, mask, pool, drawn)
        scores = (reference_scores(model, ids, mask, 5)
                  - reference_scores(model, counterfactual, mask, 5)).float()
        expected.append(depn.select_candidates(scores, [0, 1]))

    # Execute
    found = depn.detect_privacy_neurons(model, secrets, private, steps=5, top_z=8, contrast=1,
                                        token_pool=pool, generator=torch.Generator().manual_seed(3))

    # Assert: the same candidates, and the result differs from plain attribution
    plain = depn.detect_privacy_neurons(model, secrets, private, steps=5, top_z=8)
    for got, want in zip(found.candidates, expected):
        assert [(layer, i) for layer, i, _ in got] == [(layer, i) for layer, i, _ in want]
        assert [s for *_, s in got] == pytest.approx([s for *_, s in want], rel=1e-3, abs=1e-7)
    assert found.neurons == depn.aggregate(expected, 8).neurons
    assert found.candidates != plain.candidates
    with pytest.raises(ValueError, match="token_pool"):
        depn.detect_privacy_neurons(model, secrets, private, contrast=1)


def test_utility_guard_keeps_the_loss_within_budget_and_drops_only_neurons_that_break_it(memorised):
    # Prepare: as the guarded loss, the secrets' own (which zeroing privacy neurons must raise,
    # so that the guard has neurons to drop); 30 ranked candidates, a tight budget
    model, secrets, private = memorised

    def loss_of() -> float:
        with torch.no_grad():
            return model(input_ids=secrets, labels=secrets).loss.item()

    ranked = depn.detect_privacy_neurons(model, secrets, private, top_z=30, threshold_ratio=0.0)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    base = loss_of()
    budget = 0.05

    # Execute
    kept = depn.guard_utility(model, ranked, loss_of, budget)

    # Assert: the model is unedited; the kept set meets the budget; each dropped neuron, added to
    # the neurons kept before it in rank order, breaks it; an infinite budget keeps everything
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert 0 < len(kept.neurons) < len(ranked.neurons)
    assert [n for n in ranked.neurons if n in kept.neurons] == kept.neurons
    handle = depn.apply_depn(model, kept)
    assert math.exp(loss_of()) <= (1 + budget) * math.exp(base)
    handle.undo()
    for position, neuron in enumerate(ranked.neurons):
        if neuron in kept.neurons:
            continue
        before = [n for n in ranked.neurons[:position] if n in kept.neurons]
        handle = depn.apply_depn(model, depn.PrivacyNeurons(before + [neuron]))
        assert math.exp(loss_of()) > (1 + budget) * math.exp(base)
        handle.undo()
    assert depn.guard_utility(model, ranked, loss_of, float("inf")).neurons == ranked.neurons


def test_prefix_guard_keeps_the_longest_top_k_at_its_boundary_in_log_evaluations(memorised):
    # Prepare: the guarded loss as above (the secrets' own), counted; 30 ranked candidates
    model, secrets, private = memorised
    calls = []

    def loss_of() -> float:
        calls.append(1)
        with torch.no_grad():
            return model(input_ids=secrets, labels=secrets).loss.item()

    ranked = depn.detect_privacy_neurons(model, secrets, private, top_z=30, threshold_ratio=0.0)
    base = loss_of()
    budget = 0.05

    def affordable(k: int) -> bool:  # the slow reference: zero the top k and measure
        handle = depn.apply_depn(model, depn.PrivacyNeurons(ranked.neurons[:k]))
        fits = math.exp(loss_of()) <= (1 + budget) * math.exp(base)
        handle.undo()
        return fits

    # Execute
    calls.clear()
    kept = depn.guard_utility(model, ranked, loss_of, budget, search="prefix")
    evaluations = len(calls)
    # Assert: a top-k prefix that fits while the top k + 1 does not, in 2 + ⌈log2 30⌉ evaluations
    k = len(kept.neurons)
    assert 0 < k < len(ranked.neurons) and kept.neurons == ranked.neurons[:k]
    assert affordable(k) and not affordable(k + 1)
    assert evaluations <= 2 + math.ceil(math.log2(len(ranked.neurons)))
    assert depn.guard_utility(model, ranked, loss_of, float("inf"), "prefix").neurons == \
        ranked.neurons
