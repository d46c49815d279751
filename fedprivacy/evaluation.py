"""Evaluation of a causal LM: token loss / perplexity, completion likelihoods, task accuracy."""

from __future__ import annotations

import math

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedprivacy.data.encoding import iterate_batches, prompt_ids, left_padded
from fedprivacy.data.records import Record
from fedprivacy.data.tasks import TaskSpec
from fedprivacy.privacy.exposure import lm_logits, token_nll

Batch = dict[str, torch.Tensor]


@torch.no_grad()
def token_losses(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 labels: torch.Tensor) -> torch.Tensor:
    """Per-token next-token cross-entropy [N, T-1] on the CPU; 0 where the label is -100."""
    device = next(model.parameters()).device
    logits = lm_logits(model, input_ids.to(device), attention_mask.to(device))
    return token_nll(logits, labels.to(device)).cpu()


@torch.no_grad()
def evaluate_loss(model: PreTrainedModel, encoded: Batch, batch_size: int) -> tuple[float, int]:
    """Token-weighted mean loss over labelled tokens and the number of such tokens."""
    model.eval()
    total, count = 0.0, 0
    for batch in iterate_batches(encoded, batch_size, seed=0, shuffle=False):
        losses = token_losses(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        total += losses.sum().item()
        count += int((batch["labels"][:, 1:] != -100).sum())
    if count == 0:
        raise ValueError("evaluate_loss: no labelled tokens in the evaluation set")
    return total / count, count


def perplexity(mean_loss: float) -> float:
    return math.exp(min(mean_loss, 50.0))


@torch.no_grad()
def completion_log_likelihoods(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                               prompts: list[str], completions: list[str],
                               batch_size: int = 64) -> torch.Tensor:
    """Sum of log P(completion tokens | prompt) for each (prompt, completion) pair [N]."""
    model.eval()
    pairs = [(prompt_ids(tokenizer, p), tokenizer(c, add_special_tokens=False)["input_ids"])
             for p, c in zip(prompts, completions)]
    scores = torch.empty(len(pairs))
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        width = max(len(p) + len(c) for p, c in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for row, (p, c) in enumerate(chunk):
            seq = p + c
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
            labels[row, len(p):len(seq)] = torch.tensor(c)
        scores[start:start + len(chunk)] = -token_losses(model, ids, mask, labels).sum(dim=1)
    return scores


@torch.no_grad()
def label_scores(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: TaskSpec,
                 prompts: list[str], batch_size: int = 64) -> torch.Tensor:
    """Log-likelihood of each label of ``task`` after each prompt [N, L]."""
    labels = task.labels or []
    completions = [task.format_completion(label) for label in labels]
    flat = completion_log_likelihoods(model, tokenizer, [p for p in prompts for _ in completions],
                                      completions * len(prompts), batch_size)
    return flat.view(len(prompts), len(labels))


@torch.no_grad()
def task_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: TaskSpec,
                  records: list[Record], batch_size: int = 64, max_new_tokens: int = 8) -> float:
    """Accuracy on ``records``: argmax over the label space, or greedy exact match."""
    if not records:
        raise ValueError(f"task_accuracy: no records for task {task.name!r}")
    prompts = [r["prompt"] for r in records]
    gold = [r["completion"].strip() for r in records]
    if task.labels:
        best = label_scores(model, tokenizer, task, prompts, batch_size).argmax(dim=1)
        predicted = [task.labels[i] for i in best.tolist()]
    else:
        predicted = greedy_answers(model, tokenizer, prompts, max_new_tokens, batch_size)
    return sum(p == g for p, g in zip(predicted, gold)) / len(records)


@torch.no_grad()
def greedy_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                   max_new_tokens: int, batch_size: int = 64) -> list[str]:
    """Greedy continuation of each prompt, cut at the first newline or end token, stripped."""
    model.eval()
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = left_padded([prompt_ids(tokenizer, p) for p in prompts[start:start + batch_size]],
                                tokenizer.pad_token_id)
        device = next(model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        texts = tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
        answers += [t.split("\n")[0].strip() for t in texts]
    return answers
