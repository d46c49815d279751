"""DEPN: detecting and editing privacy neurons (Wu et al., EMNLP 2023; METHODS.md §4).

1. Privacy attribution (eq. 3–5): for each private token y_i of a record, integrated gradients
   from a zero baseline of P(y_i | X) w.r.t. every FFN layer's activation at the position that
   predicts y_i (causal LM: the position before the token; masked LM: the token itself, masked,
   with the other private tokens visible), m = 20, summed over the record's private tokens.
2. Per record, neurons with score ≥ ``threshold_ratio`` × that record's maximum (and > 0) are its
   candidates.
3. Aggregator (§3.4): every record votes for its candidates; the ``top_z`` most voted neurons
   are the privacy neurons. Ties are broken by the summed score, then by (layer, index) — this
   project's choice for a deterministic order (the DEPN code uses ``Counter.most_common``).
4. Editor: the privacy neurons are zeroed (``editing.scale_neurons(..., 0.0)``).

Two additions of this project's, both off in the paper's setting (``contrast=0``, no guard):

- Contrast (step 1): zero-baseline attribution of P(y_i | X) also credits neurons that help
  *any* value in that slot (any digit, any text). With ``contrast = k`` the record's scores
  become s(X) − mean_j s(X~_j), where X~_j is the record with each private token resampled
  from ``token_pool`` (other private tokens of the client); a neuron that carries the memorised
  secret scores high on X only.
- Utility guard (after step 3): `guard_utility` keeps the ranked neurons one at a time (or the
  longest affordable top-k prefix, found by bisection) while the perplexity on PII-free text
  with the kept ones zeroed stays within (1 + budget) × the unedited perplexity (loss ≤
  unedited loss + ln(1 + budget)).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from fedprivacy import attribution, sites
from fedprivacy.editing import EditHandle, scale_neurons
from fedprivacy.methods.depn import DEPNConfig

Neuron = tuple[int, int]


@dataclass
class PrivacyNeurons:
    """Detected privacy neurons.

    ``neurons``: the selected (layer, index) pairs, most voted first (at most top_z);
    ``votes``: the vote count of every candidate; ``scores``: its summed attribution;
    ``candidates``: per record, its (layer, index, score) candidates by decreasing score.
    """

    neurons: list[Neuron]
    votes: dict[Neuron, int] = field(default_factory=dict)
    scores: dict[Neuron, float] = field(default_factory=dict)
    candidates: list[list[tuple[int, int, float]]] = field(default_factory=list)

    def by_layer(self) -> dict[int, list[int]]:
        """The selected neurons as ``{layer: [index, ...]}`` for :func:`editing.scale_neurons`."""
        grouped: dict[int, list[int]] = {}
        for layer, index in self.neurons:
            grouped.setdefault(layer, []).append(index)
        return grouped


def record_scores(
    model: nn.Module,
    input_ids: torch.Tensor,
    private_mask: torch.Tensor,
    layers: Sequence[int] | None = None,
    *,
    steps: int = 20,
    mask_token_id: int | None = None,
    batch_size: int = 256,
    fast: bool | None = None,
) -> torch.Tensor:
    """Privacy attribution of one unpadded record [T] (eq. 3–5): [len(layers), d_ff], float32
    on the CPU.

    Causal LMs read P(y_t) at position t − 1 (a private first token has no prefix and is
    skipped); masked LMs need ``mask_token_id`` and mask each private token in turn.
    """
    resolved = sites.Sites(model)
    layer_ids = list(range(resolved.num_layers)) if layers is None else list(layers)
    private = private_mask.bool().nonzero().flatten().tolist()
    total = torch.zeros(len(layer_ids), resolved.ffn(layer_ids[0]).d_ff)
    kwargs = dict(steps=steps, grid="left", variant="standard", batch_size=batch_size)
    if resolved.causal:
        targets = {t - 1: int(input_ids[t]) for t in private if t > 0}
        if targets:
            total += attribution.integrated_gradients(
                model, input_ids, targets, layer_ids, fast=fast, **kwargs
            ).float().cpu()
        return total
    if mask_token_id is None:
        raise ValueError(f"{type(model).__name__} is a masked LM: pass mask_token_id")
    for t in private:
        masked = input_ids.clone()
        masked[t] = mask_token_id
        total += attribution.integrated_gradients(
            model, masked, {t: int(input_ids[t])}, layer_ids, fast=False, **kwargs
        ).float().cpu()
    return total


def select_candidates(
    scores: torch.Tensor, layers: Sequence[int], threshold_ratio: float = 0.1
) -> list[tuple[int, int, float]]:
    """A record's candidates: (layer, index, score) with score ≥ ratio × max and > 0."""
    peak = scores.max()
    if peak <= 0:
        return []
    keep = (scores >= threshold_ratio * peak) & (scores > 0)
    rows, cols = keep.nonzero(as_tuple=True)
    found = [(layers[r], c, scores[r, c].item()) for r, c in zip(rows.tolist(), cols.tolist())]
    return sorted(found, key=lambda item: (-item[2], item[0], item[1]))


def aggregate(candidates: Sequence[Sequence[tuple[int, int, float]]], top_z: int) -> PrivacyNeurons:
    """Votes across records (§3.4): the ``top_z`` most voted neurons."""
    votes: dict[Neuron, int] = {}
    scores: dict[Neuron, float] = {}
    for record in candidates:
        for layer, index, score in record:
            votes[(layer, index)] = votes.get((layer, index), 0) + 1
            scores[(layer, index)] = scores.get((layer, index), 0.0) + score
    ranked = sorted(votes, key=lambda n: (-votes[n], -scores[n], n))
    return PrivacyNeurons(ranked[:top_z], votes, scores, [list(c) for c in candidates])


def _unpadded(
    input_ids: torch.Tensor, private_mask: torch.Tensor, attention_mask: torch.Tensor | None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rows = []
    for i in range(len(input_ids)):
        keep = (
            torch.ones_like(input_ids[i], dtype=torch.bool)
            if attention_mask is None
            else attention_mask[i].bool()
        )
        rows.append((input_ids[i][keep], private_mask[i][keep]))
    return rows


def resampled_record(
    ids: torch.Tensor, private: torch.Tensor, token_pool: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """A counterfactual of record ``ids`` [T]: each private token replaced by a token drawn
    uniformly from ``token_pool`` other than itself (kept if the pool holds no other token)."""
    out = ids.clone()
    for t in private.bool().nonzero().flatten().tolist():
        others = token_pool[token_pool != ids[t]]
        if len(others):
            out[t] = others[int(torch.randint(len(others), (1,), generator=generator))]
    return out


def detect_privacy_neurons(
    model: nn.Module,
    input_ids: torch.Tensor,
    private_mask: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    layers: Sequence[int] | None = None,
    steps: int = 20,
    threshold_ratio: float = 0.1,
    top_z: int = 20,
    mask_token_id: int | None = None,
    batch_size: int = 256,
    fast: bool | None = None,
    contrast: int = 0,
    token_pool: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> PrivacyNeurons:
    """Privacy-neuron detection over records ``input_ids`` [N, T] (padding given by
    ``attention_mask``, contiguous at either end) with ``private_mask`` [N, T] True on private
    tokens: per-record attribution (minus the mean of ``contrast`` resampled counterfactuals'
    when ``contrast`` > 0, tokens drawn from ``token_pool``), relative threshold, votes, top-z
    (module docstring)."""
    if input_ids.dim() != 2 or private_mask.shape != input_ids.shape:
        raise ValueError("input_ids and private_mask must both be [N, T]")
    if contrast and token_pool is None:
        raise ValueError("contrast needs the token_pool its counterfactual tokens come from")
    resolved = sites.Sites(model)
    if layers is None:
        layers = range(resolved.num_layers)
    layer_ids = [resolved.layer(layer) for layer in layers]
    generator = generator or torch.Generator().manual_seed(0)

    def scores_of(ids: torch.Tensor, private: torch.Tensor) -> torch.Tensor:
        return record_scores(model, ids, private, layer_ids, steps=steps,
                             mask_token_id=mask_token_id, batch_size=batch_size, fast=fast)

    candidates = []
    for ids, private in _unpadded(input_ids, private_mask, attention_mask):
        scores = scores_of(ids, private)
        for _ in range(contrast):
            counterfactual = resampled_record(ids, private, token_pool, generator)
            scores -= scores_of(counterfactual, private) / contrast
        candidates.append(select_candidates(scores, layer_ids, threshold_ratio))
    return aggregate(candidates, top_z)


def guard_utility(
    model: nn.Module, neurons: PrivacyNeurons, loss_of: Callable[[], float], budget: float,
    search: str = "greedy",
) -> PrivacyNeurons:
    """Keep ranked neurons while the perplexity exp(``loss_of()``) (a held-out loss on PII-free
    text) with the kept ones zeroed stays ≤ (1 + budget) × its unedited value. The model is
    left unedited.

    ``greedy``: one neuron at a time in rank order, a neuron whose addition breaks the budget
    is dropped (1 + z evaluations). ``prefix``: the top k, k found by bisection so that the top
    k meet the budget and the top k + 1 do not (or k = z); 2 + ⌈log2 z⌉ evaluations, for models
    where one evaluation costs seconds."""
    limit = loss_of() + math.log1p(budget)
    if search == "prefix":
        return _affordable_prefix(model, neurons, lambda: loss_of() <= limit)
    kept: list[Neuron] = []
    for neuron in neurons.neurons:
        handle = apply_depn(model, PrivacyNeurons(kept + [neuron]))
        if loss_of() <= limit:
            kept.append(neuron)
        handle.undo()
    return PrivacyNeurons(kept, neurons.votes, neurons.scores, neurons.candidates)


def _affordable_prefix(model: nn.Module, neurons: PrivacyNeurons,
                       affordable: Callable[[], bool]) -> PrivacyNeurons:
    """The guard's ``prefix`` search: bisection on k with ``affordable()`` true for the top
    ``low`` zeroed and false for the top ``high`` (k = 0 always is)."""
    def fits(k: int) -> bool:
        handle = apply_depn(model, PrivacyNeurons(neurons.neurons[:k]))
        try:
            return affordable()
        finally:
            handle.undo()

    low, high = 0, len(neurons.neurons)
    if not high or fits(high):
        low = high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return PrivacyNeurons(neurons.neurons[:low], neurons.votes, neurons.scores,
                          neurons.candidates)


def apply_depn(model: nn.Module, neurons: PrivacyNeurons) -> EditHandle:
    """DEPN's editor: zero the privacy neurons' activations at every position."""
    return scale_neurons(model, neurons.by_layer(), 0.0)


def depn(
    model: nn.Module,
    input_ids: torch.Tensor,
    private_mask: torch.Tensor,
    top_z: int = 20,
    attention_mask: torch.Tensor | None = None,
    **detect_kwargs,
) -> tuple[EditHandle, PrivacyNeurons]:
    """Detect the ``top_z`` privacy neurons of the records and zero them."""
    neurons = detect_privacy_neurons(
        model, input_ids, private_mask, attention_mask, top_z=top_z, **detect_kwargs
    )
    return apply_depn(model, neurons), neurons


def most_repeated_records(input_ids: torch.Tensor, private_mask: torch.Tensor, limit: int
                          ) -> list[int]:
    """Rows of up to ``limit`` distinct records with private tokens, the most often repeated
    first (memorisation grows with repetition, Carlini et al. 2019), ties by first row."""
    rows: dict[tuple[int, ...], list[int]] = {}
    for row in torch.nonzero(private_mask.any(dim=1)).flatten().tolist():
        rows.setdefault(tuple(input_ids[row].tolist()), []).append(row)
    ranked = sorted(rows.values(), key=lambda same: (-len(same), same[0]))
    return [same[0] for same in ranked[:limit]]


def client_privacy_neurons(
    model: nn.Module, train_set: dict[str, torch.Tensor], held_out: dict[str, torch.Tensor],
    settings: DEPNConfig, batch_size: int, seed: int,
) -> tuple[PrivacyNeurons, int, int]:
    """A client's privacy neurons: detection on its ``max_records`` most repeated private
    records (contrast tokens from its own private tokens), then the utility guard on its
    PII-free ``held_out`` text unless ``utility_budget`` is negative. Returns the neurons, how many
    were detected before the guard and how many records voted; the model is left unedited."""
    chosen = most_repeated_records(train_set["input_ids"], train_set["private_mask"],
                                   settings.max_records)
    if not chosen:
        return PrivacyNeurons([]), 0, 0
    device = next(model.parameters()).device
    batch = {k: train_set[k][chosen].to(device)
             for k in ("input_ids", "private_mask", "attention_mask")}
    neurons = detect_privacy_neurons(
        model, batch["input_ids"], batch["private_mask"], batch["attention_mask"],
        top_z=settings.top_z, steps=settings.ig_steps, threshold_ratio=settings.threshold_ratio,
        contrast=settings.contrast,
        token_pool=train_set["input_ids"][train_set["private_mask"]].unique(),
        generator=torch.Generator().manual_seed(seed))
    return guard_held_out(model, neurons, held_out, settings.utility_budget, batch_size,
                          settings.guard_search), \
        len(neurons.neurons), len(chosen)


def guard_held_out(model: nn.Module, neurons: PrivacyNeurons, held_out: dict[str, torch.Tensor],
                   budget: float, batch_size: int, search: str = "greedy") -> PrivacyNeurons:
    """`guard_utility` with the loss on the encoded PII-free ``held_out`` text; the neurons
    unchanged when ``budget`` is negative (no guard) or there is no held-out text."""
    from fedprivacy.evaluation import evaluate_loss

    if budget < 0 or not len(held_out["input_ids"]):
        return neurons
    return guard_utility(model, neurons, lambda: evaluate_loss(model, held_out, batch_size)[0],
                         budget, search)


def neuron_ids(neurons: Iterable[tuple[int, int]], d_ff: int) -> list[int]:
    """(layer, index) pairs as flat ids layer·d_ff + index, in their order (a ranking stays
    one), e.g. to report them as metadata."""
    return [layer * d_ff + index for layer, index in neurons]


def neuron_pairs(ids: Iterable[int], d_ff: int) -> list[Neuron]:
    """Flat ids back to (layer, index) pairs, in their order (inverse of `neuron_ids`)."""
    return [(flat // d_ff, flat % d_ff) for flat in ids]


def round_robin_union(rankings: Iterable[Sequence[int]]) -> list[int]:
    """The union of several rankings as one ranking: every ranking's first, then every
    ranking's second, ..., each id at its first appearance."""
    rankings = [list(r) for r in rankings]
    seen: dict[int, None] = {}
    for depth in range(max((len(r) for r in rankings), default=0)):
        for ranking in rankings:
            if depth < len(ranking):
                seen.setdefault(ranking[depth], None)
    return list(seen)


def neurons_by_layer(ids: Iterable[int], d_ff: int) -> dict[int, list[int]]:
    """Flat ids back to ``{layer: [index, ...]}`` (inverse of `neuron_ids`)."""
    grouped: dict[int, list[int]] = {}
    for flat in sorted(set(ids)):
        grouped.setdefault(flat // d_ff, []).append(flat % d_ff)
    return grouped
