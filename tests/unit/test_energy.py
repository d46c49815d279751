"""Energy scores, energy → sample weights, the pseudo-data wire format and the weighted LM loss."""

import math

import pytest
import torch
import torch.nn.functional as F
from flwr.app import ConfigRecord

from fedprivacy.pseudo import (
    SAMPLE_WEIGHTINGS,
    PseudoSample,
    energy_score,
    pseudo_from_config,
    pseudo_to_config,
    sample_weights,
    weight_samples,
    weighted_lm_loss,
)

pytestmark = pytest.mark.unit


def reference_energy(row: list[float], temperature: float) -> float:
    """E = −T·log Σ_j exp(f_j/T), written out."""
    return -temperature * math.log(sum(math.exp(f / temperature) for f in row))


def reference_softmax_weights(energies: list[float], tau: float) -> list[float]:
    """w_i = n·exp(−E_i/τ) / Σ_j exp(−E_j/τ), written out."""
    z = sum(math.exp(-e / tau) for e in energies)
    return [len(energies) * math.exp(-e / tau) / z for e in energies]


def reference_weighted_loss(logits: torch.Tensor, labels: torch.Tensor, weights: list[float]) -> float:
    """Loop over samples and tokens: mean CE per sample, times its weight, mean over samples."""
    total, samples = 0.0, 0
    for b in range(labels.shape[0]):
        losses = []
        for t in range(1, labels.shape[1]):
            y = int(labels[b, t])
            if y != -100:
                losses.append(-float(torch.log_softmax(logits[b, t - 1].double(), dim=-1)[y]))
        if losses:
            total += weights[b] * sum(losses) / len(losses)
            samples += 1
    return total / samples


def sample(i: int, energy: float) -> PseudoSample:
    return PseudoSample(f"p{i}", f" c{i}", torch.zeros(2), energy)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_energy_score_agrees_with_reference(temperature):
    # Prepare
    torch.manual_seed(0)
    logits = torch.randn(5, 7) * 3

    # Execute
    energies = energy_score(logits, temperature)

    # Assert
    expected = [reference_energy(row, temperature) for row in logits.tolist()]
    assert energies.shape == (5,)
    assert energies.tolist() == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_energy_score_is_stable_and_shifts_with_the_logits():
    # Prepare
    logits = torch.tensor([[1000.0, 999.0], [0.0, -1.0]])

    # Execute
    energies = energy_score(logits)

    # Assert: no overflow, and E(f + c) = E(f) − c
    assert torch.isfinite(energies).all()
    assert float(energies[0] - energies[1]) == pytest.approx(-1000.0)


def test_energy_score_rejects_non_positive_temperature():
    # Prepare
    logits = torch.zeros(1, 3)

    # Execute / Assert
    with pytest.raises(ValueError, match="temperature"):
        energy_score(logits, 0.0)


@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
def test_softmax_weights_agree_with_reference(tau):
    # Prepare
    energies = [2.0, 0.5, -1.0, 3.5, 0.0]

    # Execute
    weights = sample_weights(energies, "softmax", temperature=tau)

    # Assert: reference values, mean 1, lower energy → higher weight
    assert weights.tolist() == pytest.approx(reference_softmax_weights(energies, tau))
    assert float(weights.mean()) == pytest.approx(1.0)
    order = sorted(range(5), key=lambda i: energies[i])
    assert [float(weights[i]) for i in order] == sorted(weights.tolist(), reverse=True)


def test_uniform_weights_ignore_energy():
    # Prepare
    energies = [2.0, -7.0, math.inf]

    # Execute
    weights = sample_weights(energies, "uniform")

    # Assert
    assert weights.tolist() == [1.0, 1.0, 1.0]
    assert set(SAMPLE_WEIGHTINGS) == {"softmax", "uniform"}


def test_top_k_keeps_lowest_energies_renormalised():
    # Prepare
    energies = [2.0, 0.5, -1.0, 3.5, 0.0]

    # Execute
    weights = sample_weights(energies, "softmax", temperature=1.0, top_k=2)

    # Assert: samples 2 and 4 kept in the softmax ratio, with mean 1 over the kept ones
    kept = [i for i, w in enumerate(weights.tolist()) if w > 0]
    assert kept == [2, 4]
    assert float(weights[2] + weights[4]) == pytest.approx(2.0)
    assert float(weights[2] / weights[4]) == pytest.approx(math.exp(1.0))


def test_floor_drops_small_normalised_weights():
    # Prepare
    energies = [0.0, 0.0, 5.0]
    full = reference_softmax_weights(energies, 1.0)

    # Execute
    weights = sample_weights(energies, "softmax", floor=0.5)

    # Assert: the high-energy sample is below the floor and dropped; the rest are equal, mean 1
    assert full[2] < 0.5 <= full[0]
    assert weights.tolist() == pytest.approx([1.0, 1.0, 0.0])


def test_infinite_energy_gets_zero_weight_and_nan_is_rejected():
    # Prepare
    energies = [1.0, math.inf, 1.0]

    # Execute
    weights = sample_weights(energies)

    # Assert: the +inf sample is dropped; the kept ones have mean 1
    assert weights.tolist() == pytest.approx([1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match=r"samples \[1\]"):
        sample_weights([0.0, math.nan])
    with pytest.raises(ValueError, match="unknown sample weighting"):
        sample_weights([0.0], "energy")


def test_weight_samples_sets_weights_and_drops_zeros():
    # Prepare
    samples = [sample(0, 0.0), sample(1, 9.0), sample(2, 1.0)]

    # Execute
    kept = weight_samples(samples, top_k=2)

    # Assert
    assert [s.prompt for s in kept] == ["p0", "p2"]
    assert sum(s.weight for s in kept) == pytest.approx(2.0)
    assert kept[0].weight > kept[1].weight
    assert weight_samples([]) == []


def test_pseudo_config_round_trips_through_a_flower_config_record():
    # Prepare
    samples = weight_samples([sample(0, 0.3), sample(1, 1.2)])

    # Execute
    record = ConfigRecord({"server-round": 3, **pseudo_to_config(samples)})
    wire = ConfigRecord.inflate(record.deflate())
    triples = pseudo_from_config(wire)

    # Assert
    assert triples == [(s.prompt, s.completion, pytest.approx(s.weight)) for s in samples]
    assert pseudo_to_config([]) == {}
    assert pseudo_from_config(ConfigRecord({"server-round": 1})) == []


def test_pseudo_from_config_rejects_inconsistent_lists():
    # Prepare
    good = pseudo_to_config([sample(0, 0.0), sample(1, 0.0)])

    # Execute / Assert
    with pytest.raises(ValueError, match="lacks"):
        pseudo_from_config({k: v for k, v in good.items() if k != "pseudo-weights"})
    with pytest.raises(ValueError, match="differ in length"):
        pseudo_from_config({**good, "pseudo-prompts": ["only one"]})
    with pytest.raises(ValueError, match="sample 1 has an invalid weight"):
        pseudo_from_config({**good, "pseudo-weights": [1.0, -2.0]})


def test_weighted_lm_loss_agrees_with_reference():
    # Prepare
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.randint(0, 11, (3, 6))
    labels[0, :3] = -100
    labels[2, :] = -100  # a sample without target tokens does not count
    labels[2, 5] = -100
    weights = torch.tensor([0.5, 2.0, 7.0])

    # Execute
    loss = weighted_lm_loss(logits, labels, weights)

    # Assert
    assert float(loss) == pytest.approx(reference_weighted_loss(logits, labels, weights.tolist()), rel=1e-5)


def test_weighted_lm_loss_with_unit_weights_is_the_mean_of_sample_means_and_has_gradients():
    # Prepare
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.randint(0, 7, (2, 5))

    # Execute
    loss = weighted_lm_loss(logits, labels, torch.ones(2))
    loss.backward()

    # Assert: equal token counts, so it equals the plain token-mean cross-entropy
    plain = F.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1))
    assert loss.item() == pytest.approx(plain.item(), rel=1e-6)
    assert logits.grad is not None and logits.grad.abs().sum() > 0
