"""DP-SGD with Opacus on tiny LLaMA and GPT-2 models: steps, clipping, accounting, errors."""

import pytest
import torch
from flwr.app import ConfigRecord
from opacus.accountants import RDPAccountant
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from fedprivacy.lm import lm_logits
from fedprivacy.privacy.dp import (
    DPConfig,
    epsilon,
    export_accountant_state,
    make_private,
    restore_accountant,
    sequence_losses,
)

pytestmark = pytest.mark.integration

SPECIAL = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=24, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, **SPECIAL))


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=24, n_embd=32, n_layer=2, n_head=4, n_positions=32,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **SPECIAL))


MODELS = [tiny_llama, tiny_gpt2]


def batch(n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded rows of different lengths; the first two tokens are an unlabelled prompt."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 24, (n, 8), generator=g)
    mask = torch.ones_like(ids)
    for i in range(n):
        mask[i, 8 - i % 4:] = 0
    ids = ids * mask
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loader(rows: int = 8, batch_size: int = 4) -> DataLoader:
    data = batch(rows)
    return DataLoader(TensorDataset(data["input_ids"], data["attention_mask"], data["labels"]), batch_size=batch_size)


@pytest.mark.parametrize("build", MODELS)
def test_one_private_step_changes_weights(build):
    # Prepare
    model = build()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader(),
                           DPConfig(poisson_sampling=False))
    # Execute
    loss = trainer.step(next(iter(trainer.data_loader)))
    # Assert: every parameter moved (GPT-2's tied wte/lm_head counts once)
    after = dict(trainer.close().named_parameters())
    assert loss > 0
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert trainer.epsilon() > 0
    state = export_accountant_state(trainer.accountant)
    assert state == {"noise_multiplier": [1.0], "sample_rate": [0.5], "steps": [1]}


@pytest.mark.parametrize("build", MODELS)
def test_per_sample_clipping_matches_per_example_loop(build):
    # Prepare: no noise, a small clipping norm, plain SGD with lr 1
    model, reference = build(1), build(1)
    data = batch(4, seed=1)
    clip = 0.05
    cfg = DPConfig(noise_multiplier=0.0, max_grad_norm=clip, poisson_sampling=False)
    trainer = make_private(model, torch.optim.SGD(model.parameters(), lr=1.0), 0.5, cfg, batch_size=4)
    params = list(reference.parameters())
    clipped = [torch.zeros_like(p) for p in params]
    norms = []
    for i in range(4):
        row = {k: v[i:i + 1] for k, v in data.items()}
        loss = sequence_losses(lm_logits(reference, row["input_ids"], row["attention_mask"]), row["labels"]).sum()
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        norms.append(norm.item())
        for acc, g in zip(clipped, grads):
            acc += g * min(1.0, clip / (norm.item() + 1e-6))
    want = [p.detach() - acc / 4 for p, acc in zip(params, clipped)]
    # Execute
    trainer.step(data)
    # Assert
    assert max(norms) > clip
    for (name, p), w in zip(trainer.close().named_parameters(), want):
        assert torch.allclose(p, w, atol=1e-6), name


def test_epsilon_composes_over_rounds_from_exported_state():
    # Prepare: 3 rounds of 2 steps, each round a fresh make_private restored from a ConfigRecord
    model = tiny_llama()
    cfg = DPConfig(noise_multiplier=1.1, poisson_sampling=False)
    record = None
    for _ in range(3):
        trainer = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader(8, 2), cfg,
                               None if record is None else dict(record))
        for _, b in zip(range(2), trainer.data_loader):
            trainer.step(b)
        record = ConfigRecord(trainer.export_state())
        model = trainer.close()
    # Execute
    rounds = epsilon(restore_accountant(dict(record)), cfg.delta)
    fresh = tiny_llama()
    single = make_private(fresh, torch.optim.SGD(fresh.parameters(), lr=0.1), 0.25, cfg, batch_size=2)
    for _ in range(6):
        single.step(batch(2))
    direct = RDPAccountant()
    for _ in range(6):
        direct.step(noise_multiplier=1.1, sample_rate=0.25)
    # Assert
    assert dict(record) == {"noise_multiplier": [1.1], "sample_rate": [0.25], "steps": [6]}
    assert rounds == pytest.approx(single.epsilon(), rel=1e-12)
    assert rounds == pytest.approx(direct.get_epsilon(delta=cfg.delta), rel=1e-12)
    two_rounds = restore_accountant({"noise_multiplier": [1.1], "sample_rate": [0.25], "steps": [4]})
    assert rounds > epsilon(two_rounds, cfg.delta)


def test_target_epsilon_sets_noise_and_is_met_after_planned_steps():
    # Prepare
    cfg = DPConfig(target_epsilon=3.0)
    model = tiny_llama()
    # Execute
    trainer = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), 0.1, cfg, batch_size=2, total_steps=50)
    planned = restore_accountant({"noise_multiplier": [trainer.noise_multiplier], "sample_rate": [0.1], "steps": [50]})
    spent = epsilon(planned, cfg.delta)
    # Assert
    assert trainer.noise_multiplier > 0
    assert 2.9 < spent <= 3.0


def test_unreachable_target_epsilon_names_the_setting():
    # Prepare
    model = tiny_llama()
    cfg = DPConfig(target_epsilon=0.01, delta=1e-7)
    # Execute / Assert
    with pytest.raises(ValueError, match=r"client\.dp\.target_epsilon=0\.01 cannot be met"):
        make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), 1.0, cfg, batch_size=2, total_steps=100)
    with pytest.raises(ValueError, match="total_steps"):
        make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), 1.0, DPConfig(target_epsilon=1.0),
                     batch_size=2)


def test_optimizer_of_another_model_is_rejected():
    # Prepare
    model, other = tiny_llama(), tiny_llama()
    # Execute / Assert
    with pytest.raises(ValueError, match="not the model's"):
        make_private(model, torch.optim.SGD(other.parameters(), lr=0.1), 0.5, DPConfig(), batch_size=2)


def test_unsupported_module_is_named():
    # Prepare
    model = nn.Sequential(nn.Embedding(24, 8), nn.BatchNorm1d(8))
    # Execute / Assert
    with pytest.raises(ValueError, match=r"1 \(BatchNorm1d\)"):
        make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), 0.5, DPConfig(), batch_size=2)


class NoPositionIds(nn.Module):
    """GPT-2 called without per-row position ids: ``wpe`` sees a batch of one."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_gpt2()

    def forward(self, input_ids, attention_mask, position_ids=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_position_embedding_without_per_row_positions_is_named():
    # Prepare
    model = NoPositionIds()
    trainer = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), 0.5, DPConfig(), batch_size=4)
    # Execute / Assert
    with pytest.raises(ValueError, match=r"inner\.transformer\.wpe\.weight"):
        trainer.step(batch(4))


def test_empty_poisson_batch_takes_a_noise_only_step():
    # Prepare
    model = tiny_llama()
    trainer = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader(8, 4),
                           DPConfig(poisson_sampling=True))
    before = model.lm_head.weight.clone()
    empty = batch(4)
    # Execute
    loss = trainer.step({k: v[:0] for k, v in empty.items()})
    # Assert
    assert loss == 0.0
    assert not torch.equal(before, model.lm_head.weight)
    assert trainer.accountant.history == [(1.0, 0.5, 1)]
    assert type(trainer.data_loader).__name__ == "DPDataLoader"
