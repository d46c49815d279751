"""Scoring, decoding and evaluation on a tiny LLaMA against unbatched and Hugging Face
references."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fedprivacy import evaluation, lm
from fedprivacy.data.encoding import encode_records, left_padded
from fedprivacy.data.records import make_record
from fedprivacy.data.tasks import TaskSpec
from tests.tiny import word_tokenizer

pytestmark = pytest.mark.integration

WORDS = ["[PAD]", "[UNK]", "[EOS]", "\n", "Classify", "the", "review.", "Input:", "Answer:",
         "positive", "negative", "very", "good", "bad", "movie", "plot", "not", "a"]
TASK = TaskSpec("review", "Classify the review.", ["positive", "negative"], "one label",
                sampler=lambda rng: ("good movie", "positive"))
OPEN_TASK = TaskSpec("echo", "Classify the review.", None, "words",
                     sampler=lambda rng: ("good movie", "good"))
PROMPTS = ["Classify the review.\nInput: very good movie\nAnswer:",
           "Classify the review.\nInput: bad\nAnswer:",
           "Classify the review.\nInput: not a good plot at all\nAnswer:"]


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer(WORDS)


@pytest.fixture()
def model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, pad_token_id=0, eos_token_id=2, bos_token_id=2)
    return LlamaForCausalLM(config)


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def reference_loglik(model, prompt, completion):
    seq = torch.tensor([prompt + completion])
    logp = model(input_ids=seq).logits[0].double().log_softmax(-1)
    return sum(logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(completion))


def test_completion_log_likelihoods_match_unbatched_reference(model, tokenizer):
    # Prepare
    model.eval()
    completions = [" positive", " negative very bad", ""]

    # Execute
    scores = evaluation.completion_log_likelihoods(model, tokenizer, PROMPTS, completions,
                                                   batch_size=2)

    # Assert
    expected = [reference_loglik(model, ids(tokenizer, p), ids(tokenizer, c))
                for p, c in zip(PROMPTS, completions)]
    assert scores.tolist() == pytest.approx(expected, abs=1e-4)


def test_greedy_answers_match_hugging_face_generate(model, tokenizer):
    # Prepare
    model.eval()
    prompt_ids = [ids(tokenizer, p) for p in PROMPTS]
    batch, mask = left_padded(prompt_ids, tokenizer.pad_token_id)

    # Execute
    answers = evaluation.greedy_answers(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=2)

    # Assert
    with torch.no_grad():
        out = model.generate(input_ids=batch, attention_mask=mask, max_new_tokens=6,
                             do_sample=False, pad_token_id=0, eos_token_id=2)
    texts = tokenizer.batch_decode(out[:, batch.shape[1]:], skip_special_tokens=True)
    assert answers == [t.split("\n", 1)[0].strip() for t in texts]


def test_sampling_draws_what_hugging_face_generate_draws(model, tokenizer):
    # Prepare: prompts of different lengths, so rows are left-padded
    model.eval()
    prompt_ids = [ids(tokenizer, p) for p in PROMPTS] * 3
    batch, mask = left_padded(prompt_ids, 0)

    # Execute
    torch.manual_seed(11)
    mine = lm.generate_ids(model, prompt_ids, 8, pad_id=0, eos_id=2, do_sample=True,
                           temperature=1.5, top_p=0.9)
    torch.manual_seed(11)
    with torch.no_grad():
        theirs = model.generate(input_ids=batch, attention_mask=mask, max_new_tokens=8,
                                do_sample=True, temperature=1.5, top_p=0.9, top_k=0,
                                pad_token_id=0, eos_token_id=2)[:, batch.shape[1]:]

    # Assert
    width = theirs.shape[1]
    assert torch.equal(mine[:, :width], theirs)
    assert (mine[:, width:] == 0).all()


def test_evaluation_restores_the_train_mode(model, tokenizer):
    # Prepare
    records = [make_record(p, " positive", TASK.name) for p in PROMPTS]
    encoded = encode_records(tokenizer, records, max_length=32)
    model.train()

    # Execute
    loss, count = evaluation.evaluate_loss(model, encoded, batch_size=2)
    accuracy = evaluation.task_accuracy(model, tokenizer, TASK, records)
    open_accuracy = evaluation.task_accuracy(model, tokenizer, OPEN_TASK, records,
                                             max_new_tokens=2)

    # Assert
    assert model.training and all(m.training for m in model.modules())
    assert count == 3 * 2 and loss > 0
    assert 0.0 <= accuracy <= 1.0 and 0.0 <= open_accuracy <= 1.0
