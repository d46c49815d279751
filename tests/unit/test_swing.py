"""Swing distillation pieces and privacy detectors on small tensors (no transformer)."""

import math
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from torch import nn
from transformers import PreTrainedTokenizerFast

from fedprivacy.privacy import swing
from fedprivacy.privacy.detectors import (
    DETECTORS,
    ModelScoreDetector,
    PatternDetector,
    SpanDetector,
)
from fedprivacy.privacy.swing import SwingConfig

pytestmark = pytest.mark.unit


def slow_distillation_loss(student, teacher_probs, labels, temps, alpha, weights=None):
    """Reference: the loss token by token, with explicit sums."""
    ce, kd, count = 0.0, 0.0, 0
    for n in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            if labels[n, t] == -100:
                continue
            count += 1
            w = 1.0 if weights is None else float(weights[n, t])
            ce += -w * torch.log_softmax(student[n, t - 1], -1)[labels[n, t]].item()
            q = teacher_probs[n, t - 1]
            p = torch.softmax(student[n, t - 1] / temps[n, t], -1)
            kl = sum(qi * math.log(qi / pi) for qi, pi in zip(q.tolist(), p.tolist()) if qi > 0)
            kd += float(temps[n, t]) ** 2 * kl
    return (1 - alpha) * ce / count + alpha * kd / count


def test_temperature_maps_match_formulas_token_by_token():
    # Prepare
    p = torch.rand(3, 7)
    for name in ("linear", "exponential"):
        cfg = SwingConfig(temperature_map=name, t0=1.5, t_max=12.0)
        # Execute
        temps = swing.swing_temperatures(p, cfg)
        # Assert
        for n in range(3):
            for t in range(7):
                x = p[n, t].item()
                want = 1.5 + 10.5 * x if name == "linear" else 1.5 * (12.0 / 1.5) ** x
                assert temps[n, t].item() == pytest.approx(want, rel=1e-5)
    ends = swing.swing_temperatures(torch.tensor([0.0, 1.0]), SwingConfig())
    assert ends.tolist() == pytest.approx([1.0, 20.0])


def test_temperatures_reject_bad_inputs():
    # Execute / Assert
    with pytest.raises(ValueError, match="temperature_map"):
        swing.swing_temperatures(torch.zeros(2), SwingConfig(temperature_map="cubic"))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        swing.swing_temperatures(torch.tensor([1.5]), SwingConfig())


def test_swing_without_noise_at_unit_temperature_equals_plain_kd_and_reference():
    # Prepare
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    labels = torch.randint(11, (2, 5))
    labels[0, 2] = -100
    cfg = SwingConfig(noise="none", alpha=0.3)
    ones = torch.ones(2, 5)
    # Execute
    swing_value = swing.swing_distillation_loss(student, teacher, labels, ones, cfg)
    plain = swing.kd_loss(student, teacher, labels, temperature=1.0, alpha=0.3)
    reference = slow_distillation_loss(student, torch.softmax(teacher[:, :-1], -1), labels, ones, 0.3)
    # Assert
    assert swing_value.item() == pytest.approx(plain.item(), rel=1e-6)
    assert swing_value.item() == pytest.approx(reference, rel=1e-5)


def test_swing_loss_with_per_token_temperatures_and_weights_matches_reference():
    # Prepare
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 6, 9), torch.randn(2, 6, 9)
    labels = torch.randint(9, (2, 6))
    likelihood = (torch.rand(2, 6) > 0.5).float()
    cfg = SwingConfig(noise="none")
    temps = swing.swing_temperatures(likelihood, cfg)
    # Execute
    value = swing.swing_distillation_loss(student, teacher, labels, temps, cfg, likelihood=likelihood)
    # Assert: the teacher's soft target of token t is tempered with T_t
    probs = torch.softmax(teacher[:, :-1] / temps[:, 1:].unsqueeze(-1), -1)
    reference = slow_distillation_loss(student, probs, labels, temps, 0.5, 1 - likelihood)
    assert value.item() == pytest.approx(reference, rel=1e-5)


def test_kd_loss_with_fixed_temperature_matches_reference():
    # Prepare
    torch.manual_seed(2)
    student, teacher = torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    labels = torch.randint(8, (3, 4))
    # Execute
    value = swing.kd_loss(student, teacher, labels, temperature=4.0, alpha=0.7)
    # Assert
    probs = torch.softmax(teacher[:, :-1] / 4.0, -1)
    reference = slow_distillation_loss(student, probs, labels, torch.full((3, 4), 4.0), 0.7)
    assert value.item() == pytest.approx(reference, rel=1e-5)


@pytest.mark.parametrize("noise", ["gaussian", "laplace"])
def test_noise_std_matches_theory(noise):
    # Prepare
    cfg = SwingConfig(noise=noise, epsilon=2.0, delta=1e-5)
    generator = torch.Generator().manual_seed(0)
    # Execute
    sample = swing.sample_noise(torch.Size([200_000]), cfg, generator)
    # Assert: Gaussian sigma = sqrt(2) sqrt(2 ln(1.25/delta)) / eps; Laplace std = sqrt(2) * 2 / eps
    if noise == "gaussian":
        want = math.sqrt(2) * math.sqrt(2 * math.log(1.25 / 1e-5)) / 2.0
    else:
        want = math.sqrt(2) * 2 / 2.0
    assert swing.noise_scale(cfg) * (1 if noise == "gaussian" else math.sqrt(2)) == pytest.approx(want)
    assert sample.std().item() == pytest.approx(want, rel=0.02)
    assert abs(sample.mean().item()) < 0.02 * want


@pytest.mark.parametrize("noise", ["gaussian", "laplace"])
def test_higher_epsilon_gives_less_noise(noise):
    # Prepare
    torch.manual_seed(3)
    logits = torch.randn(4, 6, 10)
    temps = torch.ones(4, 6)
    clean = torch.softmax(logits, -1)
    distances = []
    for eps in (0.5, 4.0, 64.0):
        cfg = SwingConfig(noise=noise, epsilon=eps)
        # Execute
        noisy = swing.noisy_soft_targets(logits, temps, cfg, torch.Generator().manual_seed(0))
        distances.append((noisy - clean).abs().mean().item())
        # Assert: still distributions
        assert bool((noisy >= 0).all())
        assert torch.allclose(noisy.sum(-1), torch.ones(4, 6), atol=1e-5)
    assert distances[0] > distances[1] > distances[2]
    scales = [swing.noise_scale(SwingConfig(noise=noise, epsilon=eps)) for eps in (1.0, 2.0)]
    assert scales[0] == pytest.approx(2 * scales[1])


def test_noise_on_private_leaves_public_soft_targets_clean_and_noises_private_ones():
    # Prepare: token 1 is private (p = 1), tokens 0 and 2 public (p = 0)
    torch.manual_seed(4)
    student, teacher = torch.randn(1, 4, 12), torch.randn(1, 4, 12)
    labels = torch.randint(12, (1, 4))
    likelihood = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    private_only = SwingConfig(noise="gaussian", epsilon=1.0, noise_on="private")
    everywhere = SwingConfig(noise="gaussian", epsilon=1.0, noise_on="all")
    temps = torch.ones(1, 3)
    clean = torch.softmax(teacher[:, :-1], -1)
    # Execute
    weight = likelihood[:, 1:]
    on_private = swing.noisy_soft_targets(teacher[:, :-1], temps, private_only,
                                          torch.Generator().manual_seed(0), weight)
    on_all = swing.noisy_soft_targets(teacher[:, :-1], temps, everywhere, torch.Generator().manual_seed(0))
    # Assert: public positions (0 and 2) keep the teacher's targets exactly, the private one moves
    assert torch.allclose(on_private[0, [0, 2]], clean[0, [0, 2]], atol=1e-6)
    assert (on_private[0, 1] - clean[0, 1]).abs().sum() > 0.1
    assert torch.allclose(on_private[0, 1], on_all[0, 1], atol=1e-6)  # same draw where p = 1
    assert (on_all[0, [0, 2]] - clean[0, [0, 2]]).abs().sum() > 0.1
    # and the loss sees it: with the same seed, private-only noise leaves public KL terms intact
    loss_private = swing.swing_distillation_loss(student, teacher, labels, torch.ones(1, 4), private_only,
                                                 torch.Generator().manual_seed(0), likelihood)
    reference = slow_distillation_loss(student, on_private, labels, torch.ones(1, 4), 0.5, 1 - likelihood)
    assert loss_private.item() == pytest.approx(reference, rel=1e-5)


def test_noise_on_must_be_a_known_place():
    with pytest.raises(ValueError, match="noise_on"):
        SwingConfig(noise_on="public").validate()


def test_high_temperature_flattens_private_targets():
    # Prepare: a confident teacher; token 1 private (T = 20), token 0 public (T = 1)
    logits = torch.tensor([[[8.0, 0.0, 0.0, 0.0], [8.0, 0.0, 0.0, 0.0]]])
    temps = swing.swing_temperatures(torch.tensor([[0.0, 1.0]]), SwingConfig())
    # Execute
    targets = swing.noisy_soft_targets(logits, temps, SwingConfig(noise="none"))
    # Assert
    assert targets[0, 0, 0] > 0.99
    assert targets[0, 1].max() < 0.4


def test_span_detector_margin_matches_loop():
    # Prepare
    private = torch.zeros(2, 10, dtype=torch.bool)
    private[0, 4:6] = True
    private[1, 0] = True
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 8:] = 0
    # Execute
    p = SpanDetector(margin=2)(torch.zeros(2, 10, dtype=torch.long), mask, private)
    # Assert
    for n in range(2):
        for t in range(10):
            near = any(private[n, s] for s in range(max(0, t - 2), min(10, t + 3)))
            assert p[n, t].item() == float(near and mask[n, t] == 1)


def test_span_detector_needs_private_mask():
    # Execute / Assert
    with pytest.raises(ValueError, match="private_mask"):
        SpanDetector()(torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3))


def _word_tokenizer() -> PreTrainedTokenizerFast:
    corpus = ["call John Smith at 555 123 4567 or mail john@example.com today", "the weather is fine"]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def test_pattern_detector_flags_pii_tokens_from_text_and_decoded_ids():
    # Prepare
    tokenizer = _word_tokenizer()
    texts = ["call John Smith at 555 123 4567 or mail john@example.com today", "the weather is fine"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    detector = DETECTORS["pattern"](tokenizer)
    # Execute
    from_texts = detector(ids, mask, texts=texts)
    from_ids = detector(ids, mask)
    # Assert
    tokens = tokenizer.convert_ids_to_tokens(ids[0])
    flagged = {tok for tok, p in zip(tokens, from_texts[0].tolist()) if p == 1.0}
    assert flagged == {"John", "Smith", "5", "1", "2", "3", "4", "6", "7", "john", "@", "example", ".", "com"}
    assert from_texts[0, tokens.index("call")] == 0 and from_texts[0, tokens.index("today")] == 0
    assert from_texts[1].sum() == 0
    assert torch.equal(from_texts, from_ids)


def test_pattern_detector_rejects_text_that_does_not_match_ids():
    # Prepare
    tokenizer = _word_tokenizer()
    batch = tokenizer(["the weather"], return_tensors="pt")
    # Execute / Assert
    with pytest.raises(ValueError, match="texts="):
        PatternDetector(tokenizer)(batch["input_ids"], batch["attention_mask"], texts=["is fine"])


class Bigram(nn.Module):
    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(self, input_ids, attention_mask=None, position_ids=None, **_):
        return SimpleNamespace(logits=self.table[input_ids])


def test_model_score_detector_flags_memorised_tokens():
    # Prepare: the "teacher" predicts 7 after 3 with certainty; the reference does not
    reference = Bigram(torch.zeros(10, 10))
    table = torch.zeros(10, 10)
    table[3, 7] = 20.0
    teacher = Bigram(table)
    ids = torch.tensor([[1, 3, 7, 2, 3, 5]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    # Execute
    p = ModelScoreDetector(teacher, reference)(ids, mask)
    # Assert: gap = log 10 - ~0 nats at token 7; -log(10) + ... elsewhere
    assert p[0, 2] > 0.5
    assert p[0, [0, 1, 3, 4, 5]].max() < 0.05
    assert p[0, 5] == 0
