"""FewFedWeight pseudo data: generation from the global model, energy scores and sample weights.

FewFedWeight (Dong et al., arXiv 2212.08354) is known from its abstract only: the server
"produces pseudo data for clients" with the global model and weights the pseudo samples with
"an energy-based algorithm". Everything below is this project's documented reconstruction
(see METHODS.md §7 and DESIGN.md "Where the papers are silent"):

1. Pseudo inputs: the global model continues the task template up to ``{input}`` (instruction
   filled in), sampled with temperature / top-p; the text is cut at the first newline.
2. Pseudo labels: for a classification task (non-empty ``labels``) the label with the highest
   log-likelihood of ``" " + label`` after the rendered prompt; for a generation task the greedy
   answer.
3. Energy (Liu et al. 2020, "Energy-based out-of-distribution detection"):
   E(x) = −T·logsumexp(f(x)/T). Classification: f(x) are the label log-likelihoods, so with T = 1
   E(x) = −log Σ_y P(y | x), low when the model puts its mass on the label space. Generation:
   the mean over answer tokens of −T·logsumexp(next-token logits / T).
4. Energy → weight (``SAMPLE_WEIGHTINGS``): ``"softmax"`` (this project's default)
   w_i = n·exp(−E_i/τ) / Σ_j exp(−E_j/τ), i.e. ∝ exp(−E/τ) with mean 1 over the client's pseudo
   set; ``"uniform"`` (all 1, the "no energy weighting" ablation). Optional ``top_k`` (keep the k
   lowest energies) and ``floor`` (drop normalised weights below it); the kept weights are
   renormalised to mean 1 (this project's choice, so the loss scale does not depend on the drop).
5. Local loss: ``weighted_lm_loss``, each sample's mean token cross-entropy times its weight.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedprivacy.data.encoding import prompt_ids as encode_prompt
from fedprivacy.lm import (
    IGNORE_INDEX,
    evaluating,
    generate_texts,
    pad_token_id,
    score_completions,
    token_nll,
)
from fedprivacy.methods.fewfedweight import COMPLETIONS_KEY, PROMPTS_KEY, WEIGHTS_KEY


@dataclass(frozen=True, eq=False)
class PseudoSample:
    """One pseudo example. ``label_logits``: label log-likelihoods [L] (classification) or the
    log-probabilities of the greedy answer tokens [n] (generation). ``weight`` is 1 until
    ``weight_samples`` sets it."""

    prompt: str
    completion: str
    label_logits: torch.Tensor
    energy: float
    weight: float = 1.0


# ---------------------------------------------------------------- task description helpers

def task_labels(description: Mapping[str, Any]) -> list[str]:
    """The label space: ``labels`` as a JSON list string (or a list); "", "null" or [] mean a
    generation task."""
    raw = description.get("labels") or []
    labels = (json.loads(raw) if isinstance(raw, str) else list(raw)) or []
    if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
        raise ValueError(f"task labels must be a list of non-empty strings, got {labels!r}")
    return labels


def render_template(description: Mapping[str, Any], input_text: str | None = None) -> str:
    """``template.format(instruction=..., answer_format=..., input=...)``, as the task's own
    prompts are rendered. With ``input_text=None`` only the part before ``{input}`` is rendered."""
    template = str(description["template"])
    if input_text is None:
        if "{input}" not in template:
            raise ValueError(f"task template has no {{input}} placeholder: {template!r}")
        template = template.split("{input}", 1)[0]
    try:
        return template.format(instruction=str(description.get("instruction", "")),
                               answer_format=str(description.get("answer_format", "")),
                               input=input_text or "")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"task template {template!r} cannot be rendered: {err!r}") from err


# ---------------------------------------------------------------- energy and weights

def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """E = −T·logsumexp(logits/T) over the last dimension (Liu et al. 2020)."""
    if temperature <= 0:
        raise ValueError(f"energy temperature must be > 0, got {temperature}")
    return -temperature * torch.logsumexp(logits.double() / temperature, dim=-1)


def _softmax_weighting(energies: torch.Tensor, temperature: float) -> torch.Tensor:
    """w_i = n·softmax(−E/τ)_i: ∝ exp(−E_i/τ), mean 1. A +inf energy gets weight 0."""
    if temperature <= 0:
        raise ValueError(f"sample weight temperature must be > 0, got {temperature}")
    if not torch.isfinite(energies).any():
        return torch.zeros_like(energies)
    return len(energies) * torch.softmax(-energies / temperature, dim=0)


def _uniform_weighting(energies: torch.Tensor, temperature: float) -> torch.Tensor:
    """All weights 1: the "no energy weighting" ablation."""
    return torch.ones_like(energies)


SampleWeighting = Callable[[torch.Tensor, float], torch.Tensor]
SAMPLE_WEIGHTINGS: dict[str, SampleWeighting] = {
    "softmax": _softmax_weighting,  # this project's default
    "uniform": _uniform_weighting,
}


def sample_weights(energies: Sequence[float] | torch.Tensor, method: str = "softmax",
                   temperature: float = 1.0, floor: float = 0.0,
                   top_k: int | None = None) -> torch.Tensor:
    """Weights [n] (float64) for pseudo samples with the given energies.

    ``method`` names a ``SAMPLE_WEIGHTINGS`` map; then ``top_k`` (None or 0 = all) keeps the k
    lowest energies and ``floor`` drops normalised weights below it. Dropped samples (and those
    the map gives weight 0, e.g. energy +inf) get 0; the kept ones are renormalised to mean 1."""
    if method not in SAMPLE_WEIGHTINGS:
        raise ValueError(f"unknown sample weighting {method!r}; choose from {sorted(SAMPLE_WEIGHTINGS)}")
    e = torch.as_tensor(energies, dtype=torch.float64).flatten()
    bad = torch.nonzero(torch.isnan(e) | (e == -math.inf)).flatten().tolist()
    if bad:
        raise ValueError(f"pseudo sample energies must not be NaN or -inf (samples {bad})")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    w = SAMPLE_WEIGHTINGS[method](e, temperature)
    keep = w > 0
    if top_k:
        ranked = torch.argsort(e, stable=True)
        keep[ranked[top_k:]] = False
    keep &= w >= floor
    w = torch.where(keep, w, torch.zeros_like(w))
    return w * keep.sum() / w.sum() if keep.any() else w


def weight_samples(samples: Sequence[PseudoSample], method: str = "softmax",
                   temperature: float = 1.0, floor: float = 0.0,
                   top_k: int | None = None) -> list[PseudoSample]:
    """The samples that keep a positive weight, with ``weight`` set (see ``sample_weights``)."""
    if not samples:
        return []
    w = sample_weights([s.energy for s in samples], method, temperature, floor, top_k)
    return [replace(s, weight=float(x)) for s, x in zip(samples, w.tolist()) if x > 0]


# ---------------------------------------------------------------- wire format

def pseudo_to_config(samples: Sequence[PseudoSample]) -> dict[str, list[str] | list[float]]:
    """Lists of str / float for a Flower ``ConfigRecord``; {} when there are no samples
    (an empty list has no element type on the wire)."""
    if not samples:
        return {}
    return {PROMPTS_KEY: [s.prompt for s in samples],
            COMPLETIONS_KEY: [s.completion for s in samples],
            WEIGHTS_KEY: [float(s.weight) for s in samples]}


def pseudo_from_config(cfg: Mapping[str, Any]) -> list[tuple[str, str, float]]:
    """(prompt, completion, weight) triples from a config written by ``pseudo_to_config``."""
    keys = (PROMPTS_KEY, COMPLETIONS_KEY, WEIGHTS_KEY)
    present = [k for k in keys if k in cfg]
    if not present:
        return []
    if len(present) != len(keys):
        raise ValueError(f"pseudo data config has {present} but lacks {sorted(set(keys) - set(present))}")
    prompts, completions, weights = (list(cfg[k]) for k in keys)
    if not len(prompts) == len(completions) == len(weights):
        raise ValueError(f"pseudo data lists differ in length: {len(prompts)} prompts, "
                         f"{len(completions)} completions, {len(weights)} weights")
    for i, w in enumerate(weights):
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise ValueError(f"pseudo sample {i} has an invalid weight {w!r}")
    return [(str(p), str(c), float(w)) for p, c, w in zip(prompts, completions, weights)]


# ---------------------------------------------------------------- weighted loss

def weighted_lm_loss(logits: torch.Tensor, labels: torch.Tensor,
                     sample_weights: torch.Tensor) -> torch.Tensor:
    """(1/m)·Σ_i w_i·ℓ_i with ℓ_i the mean next-token cross-entropy of sample i.

    ``logits`` [B, S, V] and ``labels`` [B, S] are aligned as in Hugging Face (the shift happens
    here); IGNORE_INDEX labels are ignored; m counts the samples with at least one labelled
    token."""
    token_ce = token_nll(logits, labels)
    counts = (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)
    per_sample = token_ce.sum(dim=1) / counts.clamp_min(1)
    weights = sample_weights.to(per_sample)
    return (weights * per_sample).sum() / (counts > 0).sum().clamp_min(1)


# ---------------------------------------------------------------- generation and scoring

def generate_pseudo_samples(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                            description: Mapping[str, Any], count: int, max_new_tokens: int = 12,
                            temperature: float = 1.0, top_p: float = 0.95, seed: int = 0,
                            batch_size: int = 16, energy_temperature: float = 1.0,
                            answer_max_new_tokens: int = 8) -> list[PseudoSample]:
    """``count`` pseudo samples for one task from ``model`` (weights still 1; see module doc).

    Inputs are sampled (``temperature``, ``top_p``, no top-k) from the rendered template prefix,
    right spaces stripped, under a torch RNG seeded with ``seed`` and forked from the global one.
    Labels: argmax label log-likelihood, or a greedy answer of ``answer_max_new_tokens`` tokens.
    A generation sample whose answer has no token gets energy +inf (weight 0 under softmax)."""
    if count < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"count, batch_size and max_new_tokens must be >= 1 "
                         f"(got {count}, {batch_size}, {max_new_tokens})")
    labels = task_labels(description)
    pad = pad_token_id(tokenizer)
    prefix = encode_prompt(tokenizer, render_template(description).rstrip(" "))
    if not prefix:
        raise ValueError("the rendered task prefix has no tokens")
    inputs: list[str] = []
    with evaluating(model, seed=seed):
        while len(inputs) < count:
            n = min(batch_size, count - len(inputs))
            inputs += generate_texts(model, tokenizer, [prefix] * n, max_new_tokens, batch_size,
                                     do_sample=True, temperature=temperature, top_p=top_p)
    prompts = [render_template(description, x) for x in inputs]
    prompt_ids = [encode_prompt(tokenizer, p) for p in prompts]
    if labels:
        return _label_samples(model, tokenizer, prompts, prompt_ids, labels, pad, batch_size,
                              energy_temperature)
    answers = generate_texts(model, tokenizer, prompt_ids, answer_max_new_tokens, batch_size)
    completions = [" " + a for a in answers]
    pairs = [(p, tokenizer(c, add_special_tokens=False)["input_ids"])
             for p, c in zip(prompt_ids, completions)]
    scored = score_completions(model, pairs, pad, batch_size,
                               token_stat=lambda step: energy_score(step, energy_temperature))
    return [PseudoSample(p, c, s.logprobs, float(s.stat.mean()) if len(s.stat) else math.inf)
            for p, c, s in zip(prompts, completions, scored)]


def _label_samples(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                   prompt_ids: list[list[int]], labels: list[str], pad: int, batch_size: int,
                   energy_temperature: float) -> list[PseudoSample]:
    """Score every (prompt, " " + label) pair in batches; label = argmax, energy over labels."""
    completions = [" " + label for label in labels]
    label_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
    empty = [label for label, ids in zip(labels, label_ids) if not ids]
    if empty:
        raise ValueError(f"labels {empty} have no tokens under this tokenizer")
    scored = score_completions(model, [(p, c) for p in prompt_ids for c in label_ids], pad,
                               batch_size)
    loglik = torch.stack([s.logprobs.sum() for s in scored]).view(len(prompts), len(labels))
    energies = energy_score(loglik, energy_temperature)
    return [PseudoSample(p, completions[int(row.argmax())], row, float(e))
            for p, row, e in zip(prompts, loglik, energies)]
