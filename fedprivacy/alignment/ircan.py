"""IRCAN: identify context-aware FFN neurons by integrated gradients and reweight them
(METHODS.md §1; Shi et al., NeurIPS 2024).

1. Per conflict item, the attribution of every FFN neuron at the last position (eq. 1):
   Att(n_i^l) = (a_w,i − a_wo,i) · ∫_0^1 ∂P(y | c⊕q, a^l = a_wo + α(a_w − a_wo)) / ∂a_i dα,
   baseline a_wo = the activation without the context, end a_w = with it, y the first token
   of the context's answer; ``variant="endpoint"`` is the released code's α-weighted form.
2. Per item, candidates with Att ≥ ratio · max (ratio 0.1, never ≤ 0), the top 20 by score.
3. The ``h`` neurons most frequent across the items' candidate lists (``Counter.most_common``).
4. Their down-projection columns are multiplied by β (`fedprivacy.editing.scale_neurons`):
   β = 0 is ErCAN; random neurons with the same h and β are the ERN / ErRN ablations.
5. Optional IRCAN-CAD: logits = (1 + α)·logits(c⊕q) − α·logits(q), α = 0.5, greedy.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedprivacy import attribution, sites
from fedprivacy.alignment.conflict_eval import answer_token
from fedprivacy.attribution import Grid, Variant
from fedprivacy.data.conflicts import ConflictItem
from fedprivacy.data.encoding import prompt_ids
from fedprivacy.editing import EditHandle, scale_neurons

Neuron = tuple[int, int]  # (layer, index)


def context_attribution(model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                        item: ConflictItem, *, steps: int = 20,
                        variant: Variant | Sequence[Variant] = "standard", grid: Grid = "left",
                        layers: Sequence[int] | None = None,
                        batch_size: int = 256) -> torch.Tensor | dict[str, torch.Tensor]:
    """Eq. 1 for one item: [layers, d_ff] scores of P(first token of the context answer)
    (``{variant: scores}`` for several variants, from the same gradients)."""
    with_context = torch.tensor(prompt_ids(tokenizer, item.prompt))
    without = torch.tensor(prompt_ids(tokenizer, item.query))
    device = next(model.parameters()).device
    baseline = attribution.ffn_activations(model, without.to(device), layers, -1)
    target = answer_token(tokenizer, item.context_answer)
    return attribution.integrated_gradients(
        model, with_context.to(device), {-1: target}, layers, baseline=baseline, steps=steps,
        grid=grid, variant=variant, batch_size=batch_size)


def candidates(scores: torch.Tensor, threshold_ratio: float = 0.1, top: int = 20
               ) -> list[Neuron]:
    """Step 2: neurons scoring ≥ ratio · the item's maximum and > 0, best first, at most
    ``top``; ``scores`` is [layers, d_ff] with rows in layer order 0…L−1."""
    flat = scores.flatten()
    best = float(flat.max())
    if best <= 0:
        return []
    keep = torch.nonzero((flat >= threshold_ratio * best) & (flat > 0)).flatten()
    keep = keep[torch.argsort(flat[keep], descending=True, stable=True)][:top]
    width = scores.shape[-1]
    return [(int(k) // width, int(k) % width) for k in keep]


def neuron_counts(lists: Sequence[Sequence[Neuron]]) -> Counter[Neuron]:
    """In how many per-item candidate lists each neuron appears."""
    return Counter(n for per_item in lists for n in per_item)


def most_frequent(lists: Sequence[Sequence[Neuron]], h: int) -> list[Neuron]:
    """Step 3: the ``h`` neurons that appear in the most per-item lists (ties: first seen)."""
    return [n for n, _ in neuron_counts(lists).most_common(h)]


def by_layer(neurons: Sequence[Neuron]) -> dict[int, list[int]]:
    grouped: dict[int, list[int]] = {}
    for layer, index in neurons:
        grouped.setdefault(layer, []).append(index)
    return grouped


def reweight(model: nn.Module, neurons: Sequence[Neuron], beta: float) -> EditHandle:
    """Step 4: multiply the neurons' down-projection columns by β (undo with the handle)."""
    return scale_neurons(model, by_layer(neurons), beta)


def random_neurons(model: nn.Module, h: int, seed: int) -> list[Neuron]:
    """``h`` distinct neurons drawn uniformly over all layers (the ERN / ErRN control)."""
    resolved = sites.Sites(model)
    width = resolved.ffn(0).d_ff
    flat = random.Random(seed).sample(range(resolved.num_layers * width), h)
    return [(k // width, k % width) for k in flat]


def jaccard(a: Sequence[Neuron], b: Sequence[Neuron]) -> float:
    """|A ∩ B| / |A ∪ B| of two neuron selections (1.0 for two empty ones)."""
    union = set(a) | set(b)
    return len(set(a) & set(b)) / len(union) if union else 1.0


@dataclass
class Attribution:
    """Per-item candidate lists of both gradient variants (what the selection needs)."""

    standard: list[list[Neuron]]
    endpoint: list[list[Neuron]]

    def lists(self, variant: Variant) -> list[list[Neuron]]:
        return self.standard if variant == "standard" else self.endpoint


def attribute_items(model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                    items: Sequence[ConflictItem], *, steps: int, grid: Grid,
                    threshold_ratio: float, top: int, progress: bool = False) -> Attribution:
    """Steps 1–2 for every item in both gradient variants, from one pass (one selects, the
    other gives the overlap the paper's two formulations have)."""
    from tqdm import tqdm

    out: dict[str, list[list[Neuron]]] = {"standard": [], "endpoint": []}
    for item in tqdm(items, desc="IRCAN attribution", disable=not progress, leave=False):
        scores = context_attribution(model, tokenizer, item, steps=steps, variant=tuple(out),
                                     grid=grid)
        for variant, per_variant in scores.items():  # type: ignore[union-attr]
            out[variant].append(candidates(per_variant, threshold_ratio, top))
    return Attribution(out["standard"], out["endpoint"])
