"""Knowledge-conflict metrics as IRCAN's evaluation code defines them (METHODS.md §1, Metrics).

- completion: greedy continuation of the with-context prompt; its first word (case and
  surrounding punctuation ignored) is the prediction. Accuracy = share equal to the context's
  answer, stubbornness rate (SR) = share equal to the memorised answer.
- mcq: softmax over the option letters' next-token logits at the last position; accuracy =
  share choosing the context's letter, SR = share choosing the memorised one.

With ``cad_alpha`` set, both use context-aware decoding: logits = (1 + α)·logits(c⊕q) −
α·logits(q) at every step (IRCAN-CAD).
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedprivacy.data.conflicts import ConflictItem
from fedprivacy.data.encoding import prompt_ids
from fedprivacy.lm import evaluating, generate_texts, model_device

PUNCTUATION = string.punctuation + "“”‘’"


def answer_token(tokenizer: PreTrainedTokenizerBase, answer: str) -> int:
    """The first token of `` answer`` (the answer follows the prompt after a space)."""
    ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"answer {answer!r} has no tokens")
    return int(ids[0])


def first_word(text: str) -> str:
    """The prediction of a completion: its first word, lower-cased, punctuation stripped."""
    words = text.strip().split()
    return words[0].strip(PUNCTUATION).lower() if words else ""


def _cad_continue(model: nn.Module, prompt: list[int], query: list[int], steps: int,
                  alpha: float, eos_id: int | None) -> list[int]:
    """Greedy CAD decoding of one item with a KV cache per sequence."""
    device = model_device(model)
    seqs = [torch.tensor([prompt], device=device), torch.tensor([query], device=device)]
    caches: list = [None, None]
    out: list[int] = []
    for _ in range(steps):
        logits = []
        for k in (0, 1):
            step = model(input_ids=seqs[k], past_key_values=caches[k], use_cache=True)
            caches[k] = step.past_key_values
            logits.append(step.logits[0, -1].float())
        token = int(((1 + alpha) * logits[0] - alpha * logits[1]).argmax())
        if token == eos_id:
            break
        out.append(token)
        seqs = [torch.tensor([[token]], device=device)] * 2
    return out


def completion_predictions(model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                           items: Sequence[ConflictItem], max_new_tokens: int = 10,
                           cad_alpha: float | None = None, batch_size: int = 32) -> list[str]:
    """First words of the greedy (or CAD) continuations of the items' prompts."""
    prompts = [prompt_ids(tokenizer, item.prompt) for item in items]
    if cad_alpha is None:
        texts = generate_texts(model, tokenizer, prompts, max_new_tokens, batch_size)
    else:
        with evaluating(model):
            new = [_cad_continue(model, p, prompt_ids(tokenizer, item.query), max_new_tokens,
                                 cad_alpha, tokenizer.eos_token_id)
                   for p, item in zip(prompts, items)]
        texts = [t.split("\n", 1)[0] for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return [first_word(t) for t in texts]


def mcq_predictions(model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                    items: Sequence[ConflictItem], cad_alpha: float | None = None) -> list[str]:
    """The option letter with the highest next-token probability (softmax over the letters)."""
    device = model_device(model)
    out = []
    with evaluating(model):
        for item in items:
            letters = [answer_token(tokenizer, letter) for letter in item.options]

            def scores(text: str, letters: list[int] = letters) -> torch.Tensor:
                ids = torch.tensor([prompt_ids(tokenizer, text)], device=device)
                return model(input_ids=ids).logits[0, -1, letters].float()

            logits = scores(item.prompt)
            if cad_alpha is not None:
                logits = (1 + cad_alpha) * logits - cad_alpha * scores(item.query)
            out.append(item.options[int(torch.softmax(logits, -1).argmax())])
    return out


def predictions(model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                items: Sequence[ConflictItem], max_new_tokens: int = 10,
                cad_alpha: float | None = None) -> list[str]:
    """Each item's prediction in its own form (completion word or mcq letter)."""
    out: list[str | None] = [None] * len(items)
    for form in ("completion", "mcq"):
        chosen = [k for k, item in enumerate(items) if item.form == form]
        if not chosen:
            continue
        subset = [items[k] for k in chosen]
        if form == "completion":
            found = completion_predictions(model, tokenizer, subset, max_new_tokens, cad_alpha)
        else:
            found = mcq_predictions(model, tokenizer, subset, cad_alpha)
        for k, prediction in zip(chosen, found):
            out[k] = prediction
    return [p or "" for p in out]


def conflict_metrics(items: Sequence[ConflictItem], predicted: Sequence[str]
                     ) -> dict[str, float]:
    """Accuracy and stubbornness rate (fractions in [0, 1]) of predictions for ``items``."""
    if len(items) != len(predicted) or not items:
        raise ValueError(f"need one prediction per item, got {len(predicted)} for {len(items)}")

    def norm(answer: str, item: ConflictItem) -> str:
        return answer if item.form == "mcq" else first_word(answer)

    acc = sum(p == norm(i.context_answer, i) for i, p in zip(items, predicted))
    stubborn = sum(p == norm(i.memory_answer, i) for i, p in zip(items, predicted))
    return {"accuracy": acc / len(items), "stubbornness": stubborn / len(items)}


def evaluate_conflicts(model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                       items: Sequence[ConflictItem], max_new_tokens: int = 10,
                       cad_alpha: float | None = None) -> dict[str, float]:
    """`conflict_metrics` of the model's predictions."""
    return conflict_metrics(items, predictions(model, tokenizer, items, max_new_tokens,
                                               cad_alpha))
