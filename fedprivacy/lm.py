"""Generic causal-LM helpers: logits, token losses, completion scoring, decoding, eval mode.

Every method that runs a model for inference goes through these: :func:`lm_logits` (explicit
per-row positions, so left padding changes nothing), :func:`token_nll` (shifted next-token loss,
``IGNORE_INDEX`` labels skipped), :func:`score_completions` (log-probabilities of completion
tokens after a prompt), :func:`generate_ids` (greedy or sampled continuation with the KV cache)
and :func:`evaluating` (eval mode, then the previous train/eval mode back).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase, TemperatureLogitsWarper, TopPLogitsWarper

from fedprivacy.data.encoding import IGNORE_INDEX, left_padded

__all__ = [
    "IGNORE_INDEX", "CompletionScore", "evaluating", "generate_ids", "generate_texts", "lm_logits",
    "model_device", "pad_token_id", "position_ids", "score_completions", "sequence_perplexity",
    "token_nll",
]

TokenIds = Sequence[int] | torch.Tensor


@contextmanager
def evaluating(model: nn.Module, *, seed: int | None = None,
               gradients: bool = False) -> Iterator[None]:
    """Run a block with ``model`` in eval mode, then restore every submodule's train/eval mode.

    By default the block runs under ``torch.no_grad``. ``gradients=True`` leaves autograd as it
    is and freezes the parameters instead, so gradients reach only inputs and patched
    activations (attribution); their ``requires_grad`` flags are restored on exit. With ``seed``
    the torch RNG (CPU and the model's CUDA device) is forked and seeded, so the global RNG
    state is untouched.
    """
    modes = [(module, module.training) for module in model.modules()]
    frozen = [p for p in model.parameters() if p.requires_grad] if gradients else []
    device = model_device(model)
    cuda = [device.index or 0] if device.type == "cuda" else []
    model.eval()
    for p in frozen:
        p.requires_grad_(False)
    try:
        with torch.set_grad_enabled(torch.is_grad_enabled() and gradients), \
                torch.random.fork_rng(devices=cuda, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            yield
    finally:
        for p in frozen:
            p.requires_grad_(True)
        for module, training in modes:
            module.training = training


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's parameters (CPU for a model without any)."""
    return next(model.parameters(), torch.empty(0)).device


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-row positions 0, 1, ... counted over attended tokens (padding gets 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def lm_logits(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Logits [N, T, V] with explicit per-row position ids.

    Left-padded rows then see the positions an unpadded row would (this matters for learned
    absolute position embeddings such as GPT-2's ``wpe``), and every row carries its own
    position ids, which Opacus needs for per-sample gradients of those embeddings.
    """
    positions = position_ids(attention_mask)
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log p(labels[:, t+1] | tokens <= t) as [N, T-1]; 0 where the label is IGNORE_INDEX."""
    targets = labels[:, 1:]
    nll = F.cross_entropy(
        logits[:, :-1].transpose(1, 2).float(), targets.clamp(min=0), reduction="none"
    )
    return nll * (targets != IGNORE_INDEX)


def sequence_perplexity(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 64,
) -> torch.Tensor:
    """Per-sequence perplexity exp(mean_t -log p(y_t | y_<t)) over labelled tokens, shape [N].

    A row without any label gives NaN.
    """
    out = []
    device = model_device(model)
    with evaluating(model):
        for start in range(0, len(input_ids), batch_size):
            rows = slice(start, start + batch_size)
            ids, mask, lab = (t[rows].to(device) for t in (input_ids, attention_mask, labels))
            nll = token_nll(lm_logits(model, ids, mask), lab)
            out.append(torch.exp(nll.sum(1) / (lab[:, 1:] != IGNORE_INDEX).sum(1)).cpu())
    return torch.cat(out)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that fills batches: the pad token, else the end-of-sequence token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer needs a pad or end-of-sequence token for batching")
    return pad


class CompletionScore(NamedTuple):
    """Scores of one completion: ``logprobs`` [n] = log p(c_i | prompt, c_<i) (float64, CPU) and
    ``stat`` = ``token_stat`` of the float64 logits [n, V] that predict the n tokens (or None)."""

    logprobs: torch.Tensor
    stat: torch.Tensor | None


def score_completions(
    model: nn.Module,
    pairs: Sequence[tuple[TokenIds, TokenIds]],
    pad_id: int,
    batch_size: int = 64,
    token_stat: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[CompletionScore]:
    """Score each (prompt ids, completion ids) pair in right-padded batches, in eval mode.

    Right padding keeps every row's real tokens at positions 0..n-1. ``token_stat`` maps the
    logits that predict the completion tokens to a per-token statistic (e.g. the free energy).
    An empty completion gets empty tensors.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    rows = [([int(t) for t in p], [int(t) for t in c]) for p, c in pairs]
    if any(not p for p, _ in rows):
        raise ValueError("every completion needs a non-empty prompt to condition on")
    device = model_device(model)
    scored: list[CompletionScore] = []
    with evaluating(model):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(len(p) + len(c) for p, c in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, (p, c) in enumerate(chunk):
                ids[row, : len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
                mask[row, : len(p) + len(c)] = 1
            logits = lm_logits(model, ids.to(device), mask.to(device))
            for row, (p, c) in enumerate(chunk):
                step = logits[row, len(p) - 1 : len(p) + len(c) - 1].double()
                target = torch.tensor(c, dtype=torch.long, device=step.device)
                logprobs = step.log_softmax(-1).gather(1, target[:, None]).flatten()
                stat = None if token_stat is None else token_stat(step).cpu()
                scored.append(CompletionScore(logprobs.cpu(), stat))
    return scored


def generate_ids(
    model: nn.Module,
    prompts: Sequence[TokenIds],
    max_new_tokens: int,
    *,
    pad_id: int = 0,
    eos_id: int | None = None,
    batch_size: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> torch.Tensor:
    """Continue each prompt by ``max_new_tokens`` tokens: [N, max_new_tokens] on the CPU.

    Prompts are left-padded into batches with ``pad_id`` and decoded with the model's KV cache
    and explicit per-row positions, in eval mode. Greedy (argmax) by default; ``do_sample``
    draws from softmax(logits / temperature) cut to the top-p nucleus (Hugging Face's
    temperature and top-p warpers, fp32 logits, ``torch.multinomial`` on the global RNG, as
    ``generate`` does; no top-k). With ``eos_id``, a row that emitted it continues with
    ``pad_id`` and decoding stops once every row has.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1 "
                         f"(got {max_new_tokens}, {batch_size})")
    if min((len(p) for p in prompts), default=1) == 0:
        raise ValueError("every prompt needs at least one token")
    warpers = []
    if do_sample and temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if do_sample and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    device = model_device(model)
    out = []
    with evaluating(model):
        for start in range(0, len(prompts), batch_size):
            batch = left_padded(prompts[start : start + batch_size], pad_id)
            ids, mask = (t.to(device) for t in batch)
            pos = position_ids(mask)
            step = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
            alive = torch.ones(len(ids), dtype=torch.long, device=device)
            tokens: list[torch.Tensor] = []
            while True:
                scores = step.logits[:, -1].float()
                for warp in warpers:
                    scores = warp(ids, scores)
                if do_sample:
                    nxt = torch.multinomial(scores.softmax(-1), num_samples=1).squeeze(1)
                else:
                    nxt = scores.argmax(-1)
                if eos_id is not None:
                    nxt = nxt * alive + pad_id * (1 - alive)
                    alive = alive * (nxt != eos_id)
                tokens.append(nxt[:, None])
                if len(tokens) == max_new_tokens or not alive.any():
                    break
                mask = torch.cat([mask, torch.ones_like(tokens[-1])], 1)
                pos = pos[:, -1:] + 1
                step = model(input_ids=tokens[-1], attention_mask=mask, position_ids=pos,
                             past_key_values=step.past_key_values, use_cache=True)
            new = torch.cat(tokens, 1).cpu()
            out.append(F.pad(new, (0, max_new_tokens - new.shape[1]), value=pad_id))
    return torch.cat(out)


def generate_texts(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[TokenIds],
    max_new_tokens: int,
    batch_size: int = 64,
    **sampling: float | bool,
) -> list[str]:
    """:func:`generate_ids` with the tokenizer's pad and end tokens, decoded without special
    tokens, cut at the first newline and stripped. ``sampling``: ``do_sample``, ``temperature``,
    ``top_p``."""
    new = generate_ids(model, prompts, max_new_tokens, pad_id=pad_token_id(tokenizer),
                       eos_id=tokenizer.eos_token_id, batch_size=batch_size, **sampling)
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    return [t.split("\n", 1)[0].strip() for t in texts]
