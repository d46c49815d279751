"""Exposure, perplexity and extraction on tiny LLaMA and GPT-2 models built from config."""

import itertools
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from fedprivacy import lm
from fedprivacy.data.encoding import encode_records
from fedprivacy.data.pii import canary_record, heldout_canaries, make_canaries
from fedprivacy.data.tokenizer import build_tokenizer, digit_token_ids
from fedprivacy.privacy import exposure as ex
from fedprivacy.privacy.ledger import canary_leakage, canary_token_ids
from fedprivacy.privacy.membership import sentence_losses

pytestmark = pytest.mark.integration

VOCAB = 24
DIGITS = torch.arange(10, 20)
SPECIAL = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, **SPECIAL))


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                      n_positions=32, **SPECIAL))


MODELS = [tiny_llama, tiny_gpt2]
PREFIXES = [torch.tensor([1, 2, 3, 4, 5]), torch.tensor([6, 7]), torch.tensor([8, 9, 21])]


@torch.no_grad()
def unpadded_logprobs(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids.unsqueeze(0)).logits[0].log_softmax(-1)


@pytest.mark.parametrize("build", MODELS)
def test_exact_and_digitwise_match_unpadded_loops(build):
    # Prepare
    model = build().eval()
    secrets = torch.tensor([[11, 17], [19, 10], [14, 14]])
    # Execute
    exact = ex.exposure_exact(model, PREFIXES, secrets, DIGITS, batch_size=64)
    digitwise = ex.exposure_digitwise(model, PREFIXES, secrets, DIGITS)
    # Assert: every candidate scored on its own, without padding
    for e, d, prefix, secret in zip(exact.tolist(), digitwise.tolist(), PREFIXES, secrets):
        scores = {}
        for cand in itertools.product(DIGITS.tolist(), repeat=2):
            logp = unpadded_logprobs(model, torch.cat([prefix, torch.tensor(cand)]))
            scores[cand] = -sum(logp[len(prefix) - 1 + i, tok].item() for i, tok in enumerate(cand))
        mine = scores[tuple(secret.tolist())]
        rank = sum(v <= mine + 1e-5 for v in scores.values())
        assert e == pytest.approx(2 * math.log2(10) - math.log2(rank), abs=1e-6)
        digit_rank = 1
        for i in range(2):
            logp = unpadded_logprobs(model, torch.cat([prefix, secret[:i]]))[-1, DIGITS]
            beaten = int((logp >= logp[int(secret[i]) - 10] - 1e-6).sum()) - 1
            digit_rank += beaten * 10 ** (1 - i)
        assert d == pytest.approx(2 * math.log2(10) - math.log2(digit_rank), abs=1e-6)


@pytest.mark.parametrize("build", MODELS)
def test_batched_greedy_decoding_matches_one_prefix_at_a_time(build):
    # Prepare
    model = build(1).eval()
    # Execute
    fast = lm.generate_ids(model, PREFIXES, 5, batch_size=2)
    # Assert: left padding, per-row positions and the KV cache change nothing
    for row, prefix in zip(fast, PREFIXES):
        ids = prefix
        for _ in range(5):
            ids = torch.cat([ids, unpadded_logprobs(model, ids)[-1].argmax().view(1)])
        assert row.tolist() == ids[len(prefix):].tolist()


@pytest.mark.parametrize("build", MODELS)
def test_sequence_perplexity_matches_hf_loss_per_row(build):
    # Prepare: right-padded batch, prompt tokens ignored
    model = build(2).eval()
    ids = torch.tensor([[1, 2, 3, 11, 12, 13], [4, 5, 14, 15, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    labels = torch.tensor([[-100, -100, -100, 11, 12, 13], [-100, -100, 14, 15, -100, -100]])
    # Execute
    ppl = lm.sequence_perplexity(model, ids, mask, labels, batch_size=1)
    # Assert
    with torch.no_grad():
        want = [
            math.exp(model(input_ids=ids[i, :n].unsqueeze(0),
                           labels=labels[i, :n].unsqueeze(0)).loss.item())
            for i, n in enumerate([6, 4])
        ]
    assert ppl.tolist() == pytest.approx(want, rel=1e-4)


def test_model_trained_on_a_canary_has_high_exposure():
    # Prepare: train a model on a canary repeated among random digit strings
    prefix, secret = torch.tensor([0, 1, 2, 3, 20]), torch.tensor([13, 17, 11, 19])
    g = torch.Generator().manual_seed(0)
    rows = [torch.cat([prefix, secret]) if i % 4 == 0 else
            torch.cat([torch.tensor([0]), torch.randint(1, 10, (3,), generator=g),
                       torch.tensor([20]),
                       torch.randint(10, 20, (4,), generator=g)]) for i in range(32)]
    data = torch.stack(rows)
    trained, untrained = tiny_llama(3), tiny_llama(3)
    opt = torch.optim.AdamW(trained.parameters(), lr=3e-3)
    for _ in range(60):
        loss = trained(input_ids=data, labels=data).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    canary = ([prefix], secret.unsqueeze(0))
    # Execute
    exact = [ex.exposure_exact(m, *canary, DIGITS).item() for m in (trained, untrained)]
    digitwise = [ex.exposure_digitwise(m, *canary, DIGITS).item() for m in (trained, untrained)]
    extrapolated = [ex.exposure_extrapolated(m, *canary, DIGITS, num_samples=500).item()
                    for m in (trained, untrained)]
    extracted = [ex.extraction_rate(m, *canary) for m in (trained, untrained)]
    # Assert
    log2_space = 4 * math.log2(10)
    assert exact[0] == pytest.approx(log2_space)
    assert exact[1] < 0.6 * log2_space
    assert digitwise[0] == pytest.approx(log2_space)
    assert extrapolated[0] > extrapolated[1] + 3
    assert extracted == [1.0, 0.0]


@torch.no_grad()
def brute_force_exposure(model, prefix: torch.Tensor, secret: torch.Tensor) -> float:
    """Reference: every candidate string scored on its own full, unpadded forward pass."""
    candidates = torch.cartesian_prod(*[DIGITS] * len(secret))
    ids = torch.cat([prefix.expand(len(candidates), -1), candidates], 1)
    logp = model(input_ids=ids).logits[:, len(prefix) - 1 : -1].log_softmax(-1)
    scores = -logp.gather(2, candidates.unsqueeze(-1)).sum((1, 2))
    mine = scores[(candidates == secret).all(1)]
    rank = int((scores <= mine).sum())
    return len(secret) * math.log2(len(DIGITS)) - math.log2(rank)


@pytest.mark.parametrize("build", MODELS)
def test_exact_matches_brute_force_enumeration(build):
    # Prepare: float64 weights, so the cached tree walk and the full passes agree to ~1e-12
    model = build(4).double().eval()
    secrets = torch.tensor([[11, 17, 12], [19, 10, 10], [14, 14, 18]])
    # Execute
    exact = ex.exposure_exact(model, PREFIXES, secrets, DIGITS, batch_size=96)
    # Assert
    want = [brute_force_exposure(model, p, s) for p, s in zip(PREFIXES, secrets)]
    assert exact.tolist() == pytest.approx(want, abs=1e-6)
    assert len(set(want)) == 3


def test_canary_leakage_auto_is_exact_when_the_space_fits():
    # Prepare: real canaries (3-digit secrets) under the project tokenizer, a tiny LLaMA
    tok = build_tokenizer()
    canaries = make_canaries(count=2, digits=3, seed=0, client_id=0)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id)).eval()
    pairs = [canary_token_ids(tok, c) for c in canaries]
    args = ([p for p, _ in pairs], torch.stack([s for _, s in pairs]),
            torch.tensor(digit_token_ids(tok)))
    # Execute
    fits = canary_leakage(model, tok, canaries, "auto", max_candidates=1000)
    too_big = canary_leakage(model, tok, canaries, "auto", max_candidates=999)
    # Assert: 10^3 candidates fit 1000 (enumerated), not 999 (the skew-normal estimate,
    # flagged); DEPN's digit-wise figure beside both
    assert fits["exposure_exact"] == 1.0
    assert fits["exposure"] == pytest.approx(ex.exposure_exact(model, *args).tolist())
    assert too_big["exposure_exact"] == 0.0
    assert too_big["exposure"] == pytest.approx(ex.exposure_extrapolated(
        model, *args, num_samples=2000).tolist())
    digitwise = ex.exposure_digitwise(model, *args).mean().item()
    assert fits["exposure_digitwise"] == too_big["exposure_digitwise"] == pytest.approx(digitwise)
    assert "mia_auc" not in fits  # no non-members given


def test_sentence_losses_equal_a_per_sentence_forward_and_the_attack_finds_trained_canaries():
    # Prepare: a tiny LLaMA trained on 2 canaries only; 20 unseen canaries of the same format
    tok = build_tokenizer()
    members = make_canaries(count=2, digits=4, seed=0, client_id=0)
    unseen = heldout_canaries(20, 4, seed=0, client_id=0, members=members)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id))
    batch = encode_records(tok, [canary_record(c) for c in members], 64)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=batch["labels"]).loss
        optim.zero_grad()
        loss.backward()
        optim.step()
    model.eval()

    def slow_loss(canary):  # one sentence alone: <s> text </s>, mean next-token NLL
        ids = torch.tensor([[tok.bos_token_id, *tok(canary.text, add_special_tokens=False)[
            "input_ids"], tok.eos_token_id]])
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
        return -logp.gather(1, ids[0, 1:, None]).mean().item()

    # Execute
    losses = sentence_losses(model, tok, members + unseen[:3], batch_size=2)
    leak = canary_leakage(model, tok, members, "exact", nonmembers=unseen)
    # Assert: batched losses equal one-by-one; trained canaries have the lowest losses
    assert losses.tolist() == pytest.approx([slow_loss(c) for c in members + unseen[:3]],
                                            rel=1e-4)
    assert leak["mia_auc"] == 1.0
