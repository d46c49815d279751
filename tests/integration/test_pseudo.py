"""Pseudo-sample generation on a tiny LLaMA, checked against slow unbatched references."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fedprivacy.pseudo import energy_score, generate_pseudo_samples, render_template, weight_samples
from tests.tiny import word_tokenizer

pytestmark = pytest.mark.integration

WORDS = ["[PAD]", "[UNK]", "[EOS]", "\n", "Classify", "Summarize", "the", "review.", "text.",
         "Input:", "Answer:", "positive", "negative", "very", "good", "bad", "movie", "plot",
         "not", "a", "long", "short", "story"]
CLASSIFY = {"instruction": "Classify the review.", "answer_format": "one label",
            "labels": '["positive", "negative"]', "template": "{instruction}\nInput: {input}\nAnswer:"}
SUMMARIZE = {**CLASSIFY, "instruction": "Summarize the text.", "labels": "null"}  # json.dumps(None)


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer(WORDS)


@pytest.fixture(scope="module")
def model():
    """A 2-layer LLaMA with d=32, run on one thread (threads only add sync cost at this size and
    stall badly on a shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, pad_token_id=0, eos_token_id=2, bos_token_id=2)
    yield LlamaForCausalLM(config).eval()
    torch.set_num_threads(threads)


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def reference_step_logits(model, prompt_ids, completion_ids):
    """Unpadded forward of one sequence; the logits that predict each completion token."""
    seq = torch.tensor([prompt_ids + completion_ids])
    logits = model(input_ids=seq).logits[0].double()
    return logits[len(prompt_ids) - 1:len(prompt_ids) + len(completion_ids) - 1]


def reference_loglik(model, prompt_ids, completion_ids):
    step = reference_step_logits(model, prompt_ids, completion_ids)
    return sum(float(torch.log_softmax(step[i], -1)[t]) for i, t in enumerate(completion_ids))


@torch.no_grad()
def reference_greedy(model, tokenizer, prompt, max_new_tokens):
    """Greedy decoding one token at a time on the unpadded prompt."""
    seq = ids(tokenizer, prompt)
    new = []
    for _ in range(max_new_tokens):
        nxt = int(model(input_ids=torch.tensor([seq + new])).logits[0, -1].argmax())
        if nxt == tokenizer.eos_token_id:
            break
        new.append(nxt)
    return tokenizer.decode(new, skip_special_tokens=True).split("\n", 1)[0].strip()


def test_classification_pseudo_labels_agree_with_unbatched_reference(model, tokenizer):
    # Prepare
    labels = ["positive", "negative"]
    prefix = render_template(CLASSIFY)

    # Execute
    samples = generate_pseudo_samples(model, tokenizer, CLASSIFY, count=5, max_new_tokens=6,
                                      seed=3, batch_size=2)

    # Assert
    assert len(samples) == 5
    for s in samples:
        assert s.prompt.startswith(prefix) and s.prompt.endswith("\nAnswer:")
        pseudo_input = s.prompt[len(prefix):-len("\nAnswer:")]
        assert "\n" not in pseudo_input
        expected = [reference_loglik(model, ids(tokenizer, s.prompt), ids(tokenizer, " " + y))
                    for y in labels]
        assert s.label_logits.tolist() == pytest.approx(expected, abs=1e-4)
        assert s.completion == " " + labels[max(range(2), key=lambda j: expected[j])]
        assert s.energy == pytest.approx(-math.log(sum(math.exp(v) for v in expected)), abs=1e-4)
        assert s.weight == 1.0


def test_generation_pseudo_answers_agree_with_unbatched_greedy_reference(model, tokenizer):
    # Prepare
    temperature = 2.0

    # Execute
    samples = generate_pseudo_samples(model, tokenizer, SUMMARIZE, count=4, max_new_tokens=5,
                                      seed=0, batch_size=3, energy_temperature=temperature,
                                      answer_max_new_tokens=4)

    # Assert
    for s in samples:
        answer = reference_greedy(model, tokenizer, s.prompt, 4)
        assert s.completion == " " + answer
        completion_ids = ids(tokenizer, s.completion)
        step = reference_step_logits(model, ids(tokenizer, s.prompt), completion_ids)
        if completion_ids:
            expected = float(energy_score(step, temperature).mean())
            assert s.energy == pytest.approx(expected, abs=1e-4)
            logprobs = [float(torch.log_softmax(step[i], -1)[t]) for i, t in enumerate(completion_ids)]
            assert s.label_logits.tolist() == pytest.approx(logprobs, abs=1e-4)
        else:
            assert s.energy == math.inf


def test_generation_is_seeded_and_leaves_global_state_alone(model, tokenizer):
    # Prepare
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    model.train()

    # Execute
    first = generate_pseudo_samples(model, tokenizer, CLASSIFY, count=6, max_new_tokens=8, seed=7)
    second = generate_pseudo_samples(model, tokenizer, CLASSIFY, count=6, max_new_tokens=8, seed=7)
    other = generate_pseudo_samples(model, tokenizer, CLASSIFY, count=6, max_new_tokens=8, seed=8)

    # Assert
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert model.training
    model.eval()
    assert [s.prompt for s in first] == [s.prompt for s in second]
    assert [s.prompt for s in first] != [s.prompt for s in other]


def test_energy_weighting_of_generated_samples(model, tokenizer):
    # Prepare
    samples = generate_pseudo_samples(model, tokenizer, CLASSIFY, count=8, max_new_tokens=6, seed=1)

    # Execute
    weighted = weight_samples(samples, "softmax", temperature=0.05, top_k=6)

    # Assert: the 6 lowest energies are kept, ordered weights follow energies, mean 1
    assert len(weighted) == 6
    assert sorted(s.energy for s in weighted) == sorted(s.energy for s in samples)[:6]
    by_energy = sorted(weighted, key=lambda s: s.energy)
    assert [s.weight for s in by_energy] == sorted((s.weight for s in weighted), reverse=True)
    assert sum(s.weight for s in weighted) / 6 == pytest.approx(1.0)


def test_bad_descriptions_fail_clearly(model, tokenizer):
    # Prepare
    no_input = {**CLASSIFY, "template": "{instruction}\nAnswer:"}
    unknown_label = {**CLASSIFY, "labels": '["positive", ""]'}

    # Execute / Assert
    with pytest.raises(ValueError, match="no {input} placeholder"):
        generate_pseudo_samples(model, tokenizer, no_input, count=1)
    with pytest.raises(ValueError, match="non-empty strings"):
        generate_pseudo_samples(model, tokenizer, unknown_label, count=1)
    with pytest.raises(ValueError, match="cannot be rendered"):
        generate_pseudo_samples(model, tokenizer, {**CLASSIFY, "template": "{topic}: {input}"}, count=1)
