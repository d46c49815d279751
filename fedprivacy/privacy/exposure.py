"""Leakage metrics for causal LMs: canary exposure, perplexity and extraction.

Exposure (Carlini et al. 2019, "The Secret Sharer"; DEPN eq. 6):

    exposure(s) = log2 |R| - log2 rank(s),

where R is the candidate space (every string of ``n`` tokens over an alphabet A, e.g. the ten
digit tokens, |R| = |A|^n) and rank(s) is the 1-based position of the secret's log-perplexity
Px(s) = -sum_i log p(s_i | prefix, s_<i) among all candidates, ascending. Ties count against
the canary: rank(s) = #{r in R : Px(r) <= Px(s)}, so a model that cannot tell candidates
apart has exposure 0. The prefix is shared by all candidates, so only the secret tokens are
scored.

Inputs are token tensors: ``prefix_ids`` is a sequence of 1-D prompts (a 2-D tensor works when
all have one length), ``secret_ids`` is [N, n], ``candidate_token_ids`` is the alphabet [|A|].
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from scipy.stats import skewnorm
from torch import nn

from fedprivacy.data.encoding import left_padded

IGNORE_INDEX = -100


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Run a block in eval mode without gradients, then restore the model's mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's parameters (CPU for a model without any)."""
    return next(model.parameters(), torch.empty(0)).device


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-row positions 0, 1, ... counted over attended tokens (padding gets 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def lm_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits [N, T, V] with explicit per-row position ids.

    Left-padded rows then see the positions an unpadded row would (this matters for learned
    absolute position embeddings such as GPT-2's ``wpe``), and every row carries its own
    position ids, which Opacus needs for per-sample gradients of those embeddings.
    """
    return model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask)
    ).logits


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log p(labels[:, t+1] | tokens <= t) as [N, T-1]; 0 where the label is -100."""
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
    """Per-sequence perplexity exp(mean_t -log p(y_t | y_<t)) over labels != -100, shape [N].

    A row without any label gives NaN.
    """
    out = []
    device = model_device(model)
    with evaluating(model):
        for start in range(0, len(input_ids), batch_size):
            ids, mask, lab = (t[start : start + batch_size].to(device) for t in (input_ids, attention_mask, labels))
            nll = token_nll(lm_logits(model, ids, mask), lab)
            out.append(torch.exp(nll.sum(1) / (lab[:, 1:] != IGNORE_INDEX).sum(1)).cpu())
    return torch.cat(out)


def _alphabet_index(secret_ids: torch.Tensor, candidate_token_ids: torch.Tensor) -> torch.Tensor:
    """Map secret token ids [N, n] to positions in the alphabet [N, n]."""
    hits = secret_ids.unsqueeze(-1) == candidate_token_ids
    if not bool(hits.any(-1).all()):
        raise ValueError("every secret token must be one of candidate_token_ids")
    return hits.long().argmax(-1)


def _all_strings(alphabet_size: int, length: int) -> torch.Tensor:
    """All alphabet-index strings of a length in lexicographic order, [A^length, length]."""
    index = torch.arange(alphabet_size**length)
    powers = alphabet_size ** torch.arange(length - 1, -1, -1)
    return index.unsqueeze(1) // powers % alphabet_size


def _next_token_logprobs(
    model: nn.Module,
    prefix_ids: Sequence[torch.Tensor],
    owner: torch.Tensor,
    continuations: torch.Tensor,
    vocab: torch.Tensor,
    batch_size: int,
) -> torch.Tensor:
    """log p(a | prefix[owner[m]] + continuations[m, :k]) for k = 0..L and a in vocab: [M, L+1, |vocab|].

    One forward pass over prefix + continuation yields the next-token distribution after every
    continuation prefix, so scoring all strings of length L+1 needs only the strings of length L.
    """
    if min(len(p) for p in prefix_ids) == 0:
        raise ValueError("every canary needs a non-empty prefix")
    pre_ids, pre_mask = left_padded(prefix_ids, 0)
    steps = continuations.shape[1] + 1
    device = model_device(model)
    out = []
    with evaluating(model):
        for start in range(0, len(owner), batch_size):
            rows = owner[start : start + batch_size]
            cont = continuations[start : start + batch_size]
            ids = torch.cat([pre_ids[rows], cont], 1).to(device)
            mask = torch.cat([pre_mask[rows], torch.ones_like(cont)], 1).to(device)
            logp = lm_logits(model, ids, mask)[:, -steps:].float().log_softmax(-1)
            out.append(logp[..., vocab.to(device)].cpu())
    return torch.cat(out)


def _exposure(log2_space: float, rank: torch.Tensor) -> torch.Tensor:
    return log2_space - torch.log2(rank.double())


def exposure_exact(
    model: nn.Module,
    prefix_ids: Sequence[torch.Tensor],
    secret_ids: torch.Tensor,
    candidate_token_ids: torch.Tensor,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Exposure by scoring every candidate in R = A^n, for each canary: [N] (float64).

    Fast path: the |A|^(n-1) strings of length n-1 are run once each; the last position's
    distribution scores all |A| endings, so the model runs |A|^(n-1) sequences per canary.
    Practical for |A|^n up to about 10^5.
    """
    n_canaries, n = secret_ids.shape
    size = len(candidate_token_ids)
    heads = _all_strings(size, n - 1)
    owner = torch.arange(n_canaries).repeat_interleave(len(heads))
    heads = heads.repeat(n_canaries, 1)
    logp = _next_token_logprobs(
        model, prefix_ids, owner, candidate_token_ids[heads], candidate_token_ids, batch_size
    )
    head_score = -logp[:, :-1].gather(2, heads.unsqueeze(-1)).sum((1, 2))
    table = (head_score.unsqueeze(1) - logp[:, -1]).reshape(n_canaries, size**n)
    secret = _alphabet_index(secret_ids, candidate_token_ids)
    secret_index = (secret * size ** torch.arange(n - 1, -1, -1)).sum(1, keepdim=True)
    rank = (table <= table.gather(1, secret_index)).sum(1)
    return _exposure(n * math.log2(size), rank)


def exposure_extrapolated(
    model: nn.Module,
    prefix_ids: Sequence[torch.Tensor],
    secret_ids: torch.Tensor,
    candidate_token_ids: torch.Tensor,
    num_samples: int = 1000,
    seed: int = 0,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Exposure for large candidate spaces (Carlini et al. 2019, sec. 4.3): [N] (float64).

    Samples ``num_samples`` candidates uniformly from R per canary, fits a skew-normal to their
    log-perplexities, and returns -log2 CDF(Px(secret)), capped at log2 |R| (the secret itself
    is in R, so the true share is at least 1/|R|). Within the bulk of the distribution it tracks
    the exact value to a fraction of a bit; in the far tail (exposure near log2 |R|) the fitted
    tail can be off by a few bits.
    """
    n_canaries, n = secret_ids.shape
    size = len(candidate_token_ids)
    generator = torch.Generator().manual_seed(seed)
    samples = torch.randint(size, (n_canaries, num_samples, n), generator=generator)
    secret = _alphabet_index(secret_ids, candidate_token_ids)
    strings = torch.cat([secret.unsqueeze(1), samples], 1).reshape(-1, n)
    owner = torch.arange(n_canaries).repeat_interleave(num_samples + 1)
    logp = _next_token_logprobs(
        model, prefix_ids, owner, candidate_token_ids[strings[:, :-1]], candidate_token_ids, batch_size
    )
    scores = -logp.gather(2, strings.unsqueeze(-1)).sum((1, 2)).reshape(n_canaries, -1).double()
    log2_space = n * math.log2(size)
    out = []
    for row in scores.numpy():
        shape, loc, scale = skewnorm.fit(row[1:])
        log_cdf = skewnorm.logcdf(row[0], shape, loc, scale)
        out.append(min(-log_cdf / math.log(2), log2_space))
    return torch.tensor(out, dtype=torch.float64)


def exposure_digitwise(
    model: nn.Module,
    prefix_ids: Sequence[torch.Tensor],
    secret_ids: torch.Tensor,
    candidate_token_ids: torch.Tensor,
    batch_size: int = 1024,
) -> torch.Tensor:
    """DEPN's digit-by-digit exposure: [N] (float64).

    r_i = #{a != s_i : p(a | prefix, s_<i) >= p(s_i | prefix, s_<i)} (0-based rank of the true
    token among the alphabet, ties against the canary); Rank = 1 + sum_i r_i |A|^(n-1-i);
    exposure = n log2 |A| - log2 Rank. Exact when candidates are ordered position by position.
    """
    n_canaries, n = secret_ids.shape
    size = len(candidate_token_ids)
    logp = _next_token_logprobs(
        model, prefix_ids, torch.arange(n_canaries), secret_ids[:, :-1], candidate_token_ids, batch_size
    )
    true = logp.gather(2, _alphabet_index(secret_ids, candidate_token_ids).unsqueeze(-1))
    ranks = (logp >= true).sum(-1) - 1
    rank = 1 + (ranks.double() * float(size) ** torch.arange(n - 1, -1, -1, dtype=torch.float64)).sum(1)
    return _exposure(n * math.log2(size), rank)


def greedy_continuation(
    model: nn.Module, prefix_ids: Sequence[torch.Tensor], length: int, batch_size: int = 64
) -> torch.Tensor:
    """Greedy (argmax) continuation of each prefix by ``length`` tokens, [N, length].

    Prefixes are left-padded into batches and decoded with the model's KV cache.
    """
    out = []
    device = model_device(model)
    with evaluating(model):
        for start in range(0, len(prefix_ids), batch_size):
            ids, mask = (t.to(device) for t in left_padded(prefix_ids[start : start + batch_size], 0))
            pos = position_ids(mask)
            step = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
            tokens = [step.logits[:, -1].argmax(-1, keepdim=True)]
            while len(tokens) < length:
                mask = torch.cat([mask, torch.ones_like(tokens[-1])], 1)
                pos = pos[:, -1:] + 1
                step = model(
                    input_ids=tokens[-1],
                    attention_mask=mask,
                    position_ids=pos,
                    past_key_values=step.past_key_values,
                    use_cache=True,
                )
                tokens.append(step.logits[:, -1].argmax(-1, keepdim=True))
            out.append(torch.cat(tokens, 1).cpu())
    return torch.cat(out)


def extraction_rate(
    model: nn.Module, prefix_ids: Sequence[torch.Tensor], secret_ids: torch.Tensor, batch_size: int = 64
) -> float:
    """Share of canaries whose greedy continuation of the prefix reproduces the secret exactly."""
    found = greedy_continuation(model, prefix_ids, secret_ids.shape[1], batch_size)
    return (found == secret_ids).all(1).float().mean().item()
