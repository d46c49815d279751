"""Leakage metrics for causal LMs: canary exposure, perplexity and extraction.

Exposure (Carlini et al. 2019, "The Secret Sharer"; DEPN eq. 6):

    exposure(s) = log2 |R| - log2 rank(s),

where R is the candidate space (every string of ``n`` tokens over an alphabet A, e.g. the ten
digit tokens, |R| = |A|^n) and rank(s) is the 1-based position of the secret's log-perplexity
Px(s) = -sum_i log p(s_i | prefix, s_<i) among all candidates, ascending. Ties count against
the canary: rank(s) = #{r in R : Px(r) <= Px(s)}, so a model that cannot tell candidates
apart has exposure 0. The prefix is shared by all candidates, so only the secret tokens are
scored.

Estimators (``evaluation.exposure``; `fedprivacy.privacy.ledger.exposure_method`):

- :func:`exposure_exact`: the rank among all |A|^n candidates, by a cached prefix-tree walk.
  ``auto`` uses it whenever |A|^n <= ``evaluation.exposure_max_candidates``.
- :func:`exposure_digitwise`: DEPN's digit-by-digit rank (the paper's measure, reported beside
  the others), an approximation. It assumes candidates sort position by position, which a model that is unsure
  of one digit and sure of the rest breaks: it then under-reports (by up to 13.2 bits, 4.9
  against 11.6 bits on average, on the privacy sweep's FedAvg model; 10 bits on the
  constructed case in the unit tests).
- :func:`exposure_extrapolated`: a skew-normal fit on sampled candidates (Carlini et al.);
  ``auto`` uses it above ``exposure_max_candidates``.

Inputs are token tensors: ``prefix_ids`` is a sequence of 1-D prompts (a 2-D tensor works when
all have one length), ``secret_ids`` is [N, n], ``candidate_token_ids`` is the alphabet [|A|].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from scipy.stats import skewnorm
from torch import nn
from transformers import DynamicCache

from fedprivacy.data.encoding import left_padded
from fedprivacy.lm import (
    evaluating,
    generate_ids,
    lm_logits,
    model_device,
)


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
    """log p(a | prefix[owner[m]] + continuations[m, :k]), k = 0..L, a in vocab: [M, L+1, |vocab|].

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
            logp = _log_softmax(lm_logits(model, ids, mask)[:, -steps:])
            out.append(logp[..., vocab.to(device)].cpu())
    return torch.cat(out)


def _exposure(log2_space: float, rank: torch.Tensor) -> torch.Tensor:
    return log2_space - torch.log2(rank.double())


KVRows = list[tuple[torch.Tensor | None, ...]]  # per-layer (keys, values, ...) of a KV cache


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the vocabulary, in float32 or wider (a float64 model stays float64)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)


def _cache_rows(cache: object) -> KVRows:
    """Per-layer (keys, values, ...) tensors of a DynamicCache, batch first."""
    if not isinstance(cache, DynamicCache):
        raise ValueError("exposure_exact walks the candidate tree with the model's KV cache; the "
                         f"model returned {type(cache).__name__}, not a transformers DynamicCache")
    return [tuple(layer) for layer in cache]


def _extend(
    model: nn.Module,
    kv: KVRows,
    parents: torch.Tensor,
    tokens: torch.Tensor,
    length: int,
) -> tuple[torch.Tensor, object]:
    """Feed ``tokens[m]`` after cached row ``parents[m]`` (``length`` tokens long).

    Returns the next-token log-probabilities [M, V] and the model's cache of the extended rows.
    The cached rows are gathered into a new cache, so ``kv`` itself is never modified.
    """
    cache = DynamicCache(ddp_cache_data=[(k[parents], v[parents], *rest) for k, v, *rest in kv])
    rows, device = len(tokens), tokens.device
    out = model(input_ids=tokens.unsqueeze(1),
                attention_mask=torch.ones(rows, length + 1, dtype=torch.long, device=device),
                position_ids=torch.full((rows, 1), length, device=device),
                past_key_values=cache, use_cache=True)
    return _log_softmax(out.logits[:, -1]), out.past_key_values


def _concat_rows(parts: list[KVRows]) -> KVRows:
    """Concatenate chunked per-layer caches along the batch."""
    return [tuple(None if pieces[0] is None else torch.cat(pieces) for pieces in zip(*layer))
            for layer in zip(*parts)]


def _candidate_tree(
    model: nn.Module,
    prefix: torch.Tensor,
    length: int,
    alphabet: torch.Tensor,
    bound: float,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-perplexity of every candidate string after ``prefix`` whose score is <= ``bound``.

    Walks the prefix tree of A^length breadth-first with the KV cache: the prefix runs once,
    then each depth feeds one alphabet token per surviving node on its parent's cache, so the
    model runs 1 + |A| + ... + |A|^(length-1) one-token rows (about 1.11 |R| / |A| for the
    digits) instead of |A|^(length-1) full sequences. Scores only grow along a path (every term
    -log p is >= 0), so a node scoring above ``bound`` is cut with its whole subtree: nothing
    under it can reach the bound. Returns (lexicographic candidate indices, scores in float64).
    """
    device = model_device(model)
    size, alphabet = len(alphabet), alphabet.to(device)
    ids = prefix.to(device).unsqueeze(0)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                position_ids=torch.arange(ids.shape[1], device=device).unsqueeze(0), use_cache=True)
    logp = _log_softmax(out.logits[:, -1])[:, alphabet]
    kv = _cache_rows(out.past_key_values)
    index = torch.zeros(1, dtype=torch.long, device=device)
    score = torch.zeros(1, dtype=torch.float64, device=device)
    for depth in range(1, length + 1):
        child_score = (score.unsqueeze(1) - logp.double()).flatten()
        keep = (child_score <= bound).nonzero().flatten()
        parents, letters = keep // size, keep % size
        score, index = child_score[keep], index[parents] * size + letters
        if depth == length:
            break
        logps, caches = [], []
        for start in range(0, len(keep), batch_size):
            part = slice(start, start + batch_size)
            step_logp, cache = _extend(model, kv, parents[part], alphabet[letters[part]],
                                       len(prefix) + depth - 1)
            logps.append(step_logp[:, alphabet])
            if depth < length - 1:  # the last level's cache is never extended
                caches.append(_cache_rows(cache))
        logp = torch.cat(logps) if logps else logp[:0]
        kv = _concat_rows(caches) if caches else kv
    return index.cpu(), score.cpu()


def exposure_exact(
    model: nn.Module,
    prefix_ids: Sequence[torch.Tensor],
    secret_ids: torch.Tensor,
    candidate_token_ids: torch.Tensor,
    batch_size: int = 4096,
) -> torch.Tensor:
    """Exposure by ranking the secret among every candidate in R = A^n, per canary: [N] (float64).

    Exact (no sampling, no approximation): the rank counts every candidate whose
    log-perplexity is <= the secret's, ties against the canary. The candidates are enumerated
    as a prefix tree with the model's KV cache (:func:`_candidate_tree`), cut at the secret's
    score: a memorised secret (high exposure) leaves few branches to expand, an unremarkable
    one costs up to 1.11 |R| / |A| one-token rows. 10^6 six-digit candidates, tiny LLaMA
    preset, 2 shared CPU cores: ~57 s per canary for an untrained model (nothing cut), ~2 s for
    10^5; once secrets are memorised a client's 2 canaries take seconds. ``batch_size``: rows
    per forward pass. Needs a model that returns a transformers ``DynamicCache``.
    """
    n_canaries, n = secret_ids.shape
    size = len(candidate_token_ids)
    secret = _alphabet_index(secret_ids, candidate_token_ids)
    secret_index = (secret * size ** torch.arange(n - 1, -1, -1)).sum(1)
    # the secret's own score from one full pass per canary: the tree walk's cut-off (with a
    # margin for rounding differences between the cached and the full pass)
    logp = _next_token_logprobs(model, prefix_ids, torch.arange(n_canaries), secret_ids[:, :-1],
                                candidate_token_ids, batch_size)
    reference = -logp.gather(2, secret.unsqueeze(-1)).sum((1, 2)).double()
    ranks = []
    with evaluating(model):
        for prefix, target, ref in zip(prefix_ids, secret_index.tolist(), reference.tolist()):
            prefix = torch.as_tensor(prefix)
            for bound in (ref + 1e-3 + 1e-4 * abs(ref), math.inf):
                index, score = _candidate_tree(model, prefix, n, candidate_token_ids, bound,
                                               batch_size)
                hit = (index == target).nonzero().flatten()
                if len(hit):  # every cut node scores > bound >= the secret's tree score
                    break
            ranks.append(int((score <= score[hit[0]]).sum()))
    return _exposure(n * math.log2(size), torch.tensor(ranks))


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
        model, prefix_ids, owner, candidate_token_ids[strings[:, :-1]], candidate_token_ids,
        batch_size,
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
    """DEPN's digit-by-digit exposure, an approximation: [N] (float64).

    r_i = #{a != s_i : p(a | prefix, s_<i) >= p(s_i | prefix, s_<i)} (0-based rank of the true
    token among the alphabet, ties against the canary); Rank = 1 + sum_i r_i |A|^(n-1-i);
    exposure = n log2 |A| - log2 Rank. Equal to the exact value only when candidates are
    ordered position by position; otherwise a runner-up early digit costs |A|^(n-1-i) ranks
    whatever the later digits do, and the secret is under-reported (a rank-1 secret of 10^4
    can read 3.3 bits instead of 13.3). Use it only where :func:`exposure_exact` cannot
    enumerate the space, and label it as an approximation.
    """
    n_canaries, n = secret_ids.shape
    size = len(candidate_token_ids)
    logp = _next_token_logprobs(
        model, prefix_ids, torch.arange(n_canaries), secret_ids[:, :-1], candidate_token_ids,
        batch_size,
    )
    true = logp.gather(2, _alphabet_index(secret_ids, candidate_token_ids).unsqueeze(-1))
    ranks = (logp >= true).sum(-1) - 1
    place = float(size) ** torch.arange(n - 1, -1, -1, dtype=torch.float64)
    rank = 1 + (ranks.double() * place).sum(1)
    return _exposure(n * math.log2(size), rank)


def extraction_rate(
    model: nn.Module, prefix_ids: Sequence[torch.Tensor], secret_ids: torch.Tensor, batch_size: int = 64
) -> float:
    """Share of canaries whose greedy continuation of the prefix reproduces the secret exactly."""
    found = generate_ids(model, prefix_ids, secret_ids.shape[1], batch_size=batch_size)
    return (found == secret_ids).all(1).float().mean().item()
