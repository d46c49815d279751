"""Swing distillation of a tiny teacher that memorised a canary, against plain distillation."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fedprivacy import lm
from fedprivacy.privacy import exposure as ex
from fedprivacy.privacy.detectors import DETECTORS
from fedprivacy.privacy.swing import (
    SwingConfig,
    kd_loss,
    swing_distillation_loss,
    swing_temperatures,
)

pytestmark = pytest.mark.integration

DIGITS = torch.arange(10, 20)
PREFIX = torch.tensor([0, 1, 2, 3, 4, 20])
SECRET = torch.tensor([13, 17, 11, 19])
STEPS = 80


def tiny_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=24, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=0))


def corpus() -> dict[str, torch.Tensor]:
    """64 rows "<s> w w w w : d d d d"; every 4th row is the canary; digits are private."""
    g = torch.Generator().manual_seed(0)
    rows = [torch.cat([PREFIX, SECRET]) if i % 4 == 0 else
            torch.cat([torch.tensor([0]), torch.randint(1, 10, (4,), generator=g), torch.tensor([20]),
                       torch.randint(10, 20, (4,), generator=g)]) for i in range(64)]
    ids = torch.stack(rows)
    private = torch.zeros_like(ids, dtype=torch.bool)
    private[:, len(PREFIX):] = True
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone(), "private_mask": private}


def train(model, loss_fn, data, seed: int) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(STEPS):
        rows = torch.randint(len(data["input_ids"]), (16,), generator=g)
        loss = loss_fn(model, {k: v[rows] for k, v in data.items()})
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def student_logits(model, batch):
    return lm.lm_logits(model, batch["input_ids"], batch["attention_mask"])


@pytest.fixture(scope="module")
def setup():
    data = corpus()
    teacher = tiny_llama(0)
    train(teacher, lambda m, b: lm.token_nll(student_logits(m, b), b["labels"]).mean(), data, 0)
    return data, teacher


def teacher_logits(teacher, batch):
    with torch.no_grad():
        return lm.lm_logits(teacher, batch["input_ids"], batch["attention_mask"])


def test_swing_student_leaks_the_canary_far_less_than_plain_kd(setup):
    # Prepare
    data, teacher = setup
    cfg = SwingConfig()
    detector = DETECTORS[cfg.detector]()
    noise = torch.Generator().manual_seed(1)

    def swing_loss(model, batch):
        likelihood = detector(batch["input_ids"], batch["attention_mask"], batch["private_mask"])
        return swing_distillation_loss(student_logits(model, batch), teacher_logits(teacher, batch),
                                       batch["labels"], swing_temperatures(likelihood, cfg), cfg, noise,
                                       likelihood=likelihood)

    def plain_loss(model, batch):
        return kd_loss(student_logits(model, batch), teacher_logits(teacher, batch), batch["labels"])

    plain, swing, untrained = tiny_llama(1), tiny_llama(1), tiny_llama(1)
    # Execute
    train(plain, plain_loss, data, 1)
    train(swing, swing_loss, data, 1)
    exposure = {name: ex.exposure_exact(m, [PREFIX], SECRET.unsqueeze(0), DIGITS).item()
                for name, m in [("teacher", teacher), ("plain", plain), ("swing", swing)]}
    public = data["labels"].masked_fill(data["private_mask"], -100)
    ppl = {name: lm.sequence_perplexity(m, data["input_ids"], data["attention_mask"], public).mean().item()
           for name, m in [("swing", swing), ("untrained", untrained)]}
    # Assert: the teacher and the plain student memorised the canary; swing cuts exposure by
    # more than half while its student still learns the public tokens
    log2_space = 4 * math.log2(10)
    assert exposure["teacher"] == pytest.approx(log2_space)
    assert exposure["plain"] > 0.9 * log2_space
    assert exposure["swing"] < 0.5 * exposure["plain"]
    assert ex.extraction_rate(swing, [PREFIX], SECRET.unsqueeze(0)) == 0.0
    assert ppl["swing"] < 0.75 * ppl["untrained"]


def test_model_score_detector_flags_memorised_tokens_not_unseen_ones(setup):
    # Prepare: the canary rows the teacher trained on, and unseen rows of the same form
    data, teacher = setup
    detector = DETECTORS["model_score"](teacher, tiny_llama(5))
    g = torch.Generator().manual_seed(99)
    unseen = torch.cat([torch.zeros(16, 1, dtype=torch.long), torch.randint(1, 10, (16, 4), generator=g),
                        torch.full((16, 1), 20), torch.randint(10, 20, (16, 4), generator=g)], 1)
    canary = data["input_ids"][::4]
    # Execute
    p_canary = detector(canary, torch.ones_like(canary))
    p_unseen = detector(unseen, torch.ones_like(unseen))
    # Assert: the memorised canary digits look private, unseen digits do not
    digits = slice(len(PREFIX), None)
    assert p_canary[:, digits].mean() > 0.5
    assert p_unseen[:, digits].mean() < 0.2
