"""Evaluation of a causal LM: token loss / perplexity, completion likelihoods, task accuracy.

Every function runs the model in eval mode and leaves its train/eval mode as it found it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedprivacy.data.encoding import iterate_batches, prompt_ids
from fedprivacy.data.records import Record
from fedprivacy.data.tasks import TaskSpec
from fedprivacy.lm import (
    IGNORE_INDEX,
    evaluating,
    generate_texts,
    lm_logits,
    model_device,
    pad_token_id,
    score_completions,
    token_nll,
)

Batch = dict[str, torch.Tensor]


def server_records(cfg: Any, role: str = "server") -> list[Record]:
    """The server's own records (``server.*``, never a client's data); ``role`` ``server`` is
    its evaluation set, another role a set drawn with its own seed."""
    from fedprivacy.data.federated import build_server_data

    sc = cfg.server
    return build_server_data(cfg.data, sc.eval_source, sc.eval_path, sc.eval_records,
                             cfg.simulation.num_clients, cfg.seed, role)


def server_eval_set(cfg: Any, tokenizer: PreTrainedTokenizerBase) -> Batch:
    """The server's own evaluation set, encoded."""
    from fedprivacy.data.encoding import encode_records

    return encode_records(tokenizer, server_records(cfg), cfg.data.max_length,
                          on_overflow="truncate")


def server_dev_set(cfg: Any, tokenizer: PreTrainedTokenizerBase, key: str) -> Batch:
    """A server dev set for a setting the server tunes (``key`` names it): drawn like the eval
    set with its own seed, without any record the eval set holds, encoded. The reported eval
    figures therefore never choose a setting."""
    from fedprivacy.data.encoding import encode_records

    held = {(r["prompt"], r["completion"]) for r in server_records(cfg)}
    dev = [r for r in server_records(cfg, "server-dev") if (r["prompt"], r["completion"]) not in held]
    if not dev:
        raise ValueError(f"{key}: the server has no dev text apart from its eval set "
                         f"(server.eval_source={cfg.server.eval_source!r}); use a generated "
                         "source (auto, public, tasks)")
    return encode_records(tokenizer, dev, cfg.data.max_length, on_overflow="truncate")


@torch.no_grad()
def token_losses(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 labels: torch.Tensor) -> torch.Tensor:
    """Per-token next-token cross-entropy [N, T-1] on the CPU; 0 where the label is ignored."""
    device = model_device(model)
    logits = lm_logits(model, input_ids.to(device), attention_mask.to(device))
    return token_nll(logits, labels.to(device)).cpu()


def row_losses(model: PreTrainedModel, encoded: Batch, batch_size: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed next-token loss over its labelled tokens (float64) and their
    number, [N] each, in the rows' order."""
    sums, counts = [], []
    with evaluating(model):
        for batch in iterate_batches(encoded, batch_size, seed=0, shuffle=False):
            ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
            sums.append(token_losses(model, ids, mask, labels).double().sum(1))
            counts.append((labels[:, 1:] != IGNORE_INDEX).sum(1))
    return torch.cat(sums), torch.cat(counts)


def evaluate_loss(model: PreTrainedModel, encoded: Batch, batch_size: int) -> tuple[float, int]:
    """Token-weighted mean loss over labelled tokens and the number of such tokens."""
    sums, counts = row_losses(model, encoded, batch_size)
    count = int(counts.sum())
    if count == 0:
        raise ValueError("evaluate_loss: no labelled tokens in the evaluation set")
    return float(sums.sum()) / count, count


def perplexity(mean_loss: float) -> float:
    return math.exp(min(mean_loss, 50.0))


def completion_log_likelihoods(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                               prompts: list[str], completions: list[str],
                               batch_size: int = 64) -> torch.Tensor:
    """Sum of log P(completion tokens | prompt) for each (prompt, completion) pair [N]."""
    pairs = [(prompt_ids(tokenizer, p), tokenizer(c, add_special_tokens=False)["input_ids"])
             for p, c in zip(prompts, completions)]
    scored = score_completions(model, pairs, pad_token_id(tokenizer), batch_size)
    return torch.tensor([float(s.logprobs.sum()) for s in scored], dtype=torch.float32)


def label_scores(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: TaskSpec,
                 prompts: list[str], batch_size: int = 64) -> torch.Tensor:
    """Log-likelihood of each label of ``task`` after each prompt [N, L]."""
    labels = task.labels or []
    completions = [task.format_completion(label) for label in labels]
    flat = completion_log_likelihoods(model, tokenizer, [p for p in prompts for _ in completions],
                                      completions * len(prompts), batch_size)
    return flat.view(len(prompts), len(labels))


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


def greedy_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                   max_new_tokens: int, batch_size: int = 64) -> list[str]:
    """Greedy continuation of each prompt, cut at the first newline or end token, stripped."""
    return generate_texts(model, tokenizer, [prompt_ids(tokenizer, p) for p in prompts],
                          max_new_tokens, batch_size)
