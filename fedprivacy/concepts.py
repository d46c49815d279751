"""Concepts: residual states, concept vectors, maps between models, and steering.

One engine for ConTrans (METHODS.md §2) and multilingual concepts (§3):

- :func:`last_token_states`: the residual stream after chosen blocks (``sites.resid``, HF's
  ``hidden_states[l + 1]``, the ConTrans code's ``model.layers[l]`` output) at each text's last
  token, batched; [layers, texts, d].
- :func:`concept_vectors`: v^l = mean(h_pos − h_neg) (ConTrans eq. 1, RepE ``cluster_mean``) or
  the first principal component of the recentred differences scaled to the mean difference's
  norm; the sign is fixed so that the positives project higher on most training pairs
  (RepE ``get_signs``). :func:`recognition_accuracy`: the share of held-out pairs whose positive
  projects higher (§3 step 3).
- :func:`fit_linear_map`: F = argmin ‖XF − Y‖² through the SVD of X, F = V Σ⁻¹ Uᵀ Y, with no
  bias and no centring (ConTrans eq. 2, App. A); :meth:`LinearMap.error` is the held-out
  relative error ‖XF − Y‖ / ‖Y‖.
- Steering (ConTrans eq. 3): h^l ← h^l + α·v at every position of the chosen blocks, prompt and
  generated tokens alike. :func:`steered` is a context manager; :func:`add_steering` attaches a
  persistent addition that :func:`save_steering` writes beside the model (``steering.safetensors``
  and ``steering.json``) and :func:`from_pretrained` re-attaches in one load call. Several
  additions (ConTrans, then multilingual steering) sum at their layers; the hooks act on the
  residual stream, so they compose with IRCAN's weight edits.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedprivacy import sites
from fedprivacy.lm import evaluating, model_device, pad_token_id

Method = Literal["mean", "pca"]
STEERING_FILE = "steering.safetensors"
STEERING_INDEX = "steering.json"


# --- residual states ------------------------------------------------------------------------

def last_token_states(model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                      layers: Sequence[int] | None = None, batch_size: int = 32) -> torch.Tensor:
    """Residual stream after each block of ``layers`` (all when None) at the last token of each
    text: float32 [len(layers), len(texts), d] on the CPU. Rows are right-padded, so the last
    real token never sees padding."""
    resolved = sites.Sites(model)
    layers = list(range(resolved.num_layers)) if layers is None else \
        [resolved.layer(layer) for layer in layers]
    if not texts:
        raise ValueError("last_token_states needs at least one text")
    device, pad = model_device(model), pad_token_id(tokenizer)
    chunks: list[torch.Tensor] = []
    with evaluating(model):
        for start in range(0, len(texts), batch_size):
            encoded = [tokenizer(t)["input_ids"] for t in texts[start:start + batch_size]]
            width = max(len(ids) for ids in encoded)
            ids = torch.full((len(encoded), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, seq in enumerate(encoded):
                ids[row, :len(seq)] = torch.tensor(seq)
                mask[row, :len(seq)] = 1
            chunks.append(_batch_states(model, resolved, ids.to(device), mask.to(device),
                                        layers))
    return torch.cat(chunks, 1)


def _batch_states(model: nn.Module, resolved: sites.Sites, ids: torch.Tensor,
                  mask: torch.Tensor, layers: list[int]) -> torch.Tensor:
    """[len(layers), batch, d]: each row's state at its last attended position."""
    last, rows = mask.sum(1) - 1, torch.arange(len(ids), device=ids.device)
    got: dict[int, torch.Tensor] = {}

    def recorder(layer: int):
        def record(hidden: torch.Tensor) -> None:
            got[layer] = hidden[rows, last].float().cpu()
        return record

    with sites.hooked(resolved, [(f"resid.{layer}", recorder(layer)) for layer in layers]):
        model(input_ids=ids, attention_mask=mask)
    return torch.stack([got[layer] for layer in layers])


# --- concept vectors ------------------------------------------------------------------------

def _check_pairs(pos: torch.Tensor, neg: torch.Tensor) -> None:
    if pos.shape != neg.shape or pos.dim() != 3 or pos.shape[1] == 0:
        raise ValueError(f"positive and negative states must both be [layers, pairs, d] with "
                         f"pairs >= 1; got {tuple(pos.shape)} and {tuple(neg.shape)}")


def projections(vectors: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """h·v/‖v‖ per layer: [L, n] from vectors [L, d] and states [L, n, d]."""
    unit = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.einsum("lnd,ld->ln", states, unit)


def pair_wins(vectors: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Per layer and pair, whether the positive projects higher: bool [L, n]."""
    _check_pairs(pos, neg)
    return projections(vectors, pos) > projections(vectors, neg)


def recognition_accuracy(vectors: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
                         ) -> torch.Tensor:
    """Concept recognition accuracy per layer (METHODS.md §3 step 3): the share of pairs
    whose positive projects higher on the layer's vector; [L]."""
    return pair_wins(vectors, pos, neg).double().mean(1)


def separation(vectors: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """How far apart the pairs' projections lie per layer: (mean_pos − mean_neg) / pooled std
    of the projections; [L]. Breaks ties between layers of equal recognition accuracy."""
    _check_pairs(pos, neg)
    a, b = projections(vectors, pos).double(), projections(vectors, neg).double()
    pooled = ((a.var(1, unbiased=False) + b.var(1, unbiased=False)) / 2).sqrt().clamp_min(1e-12)
    return (a.mean(1) - b.mean(1)) / pooled


def best_layer(vectors: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> int:
    """The layer whose vector recognises the pairs best, ties broken by `separation`."""
    accuracy = recognition_accuracy(vectors, pos, neg)
    score = accuracy * 1e6 + separation(vectors, pos, neg).clamp(-1e5, 1e5)
    return int(score.argmax())


def fix_signs(vectors: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Each layer's vector, negated where the positives project higher on fewer than half of
    the pairs (RepE ``get_signs``)."""
    signs = torch.where(recognition_accuracy(vectors, pos, neg) >= 0.5, 1.0, -1.0)
    return vectors * signs[:, None].to(vectors.dtype)


def concept_vectors(pos: torch.Tensor, neg: torch.Tensor, method: Method = "mean"
                    ) -> torch.Tensor:
    """One concept vector per layer from paired states [L, n, d]: ``mean`` is
    v = (1/n) Σ (h_pos − h_neg) (ConTrans eq. 1); ``pca`` is the first principal direction of the
    differences after subtracting their mean, scaled to ‖mean difference‖. Signs fixed."""
    _check_pairs(pos, neg)
    diffs = (pos - neg).double()
    mean = diffs.mean(1)
    if method == "mean":
        vectors = mean
    elif method == "pca":
        centred = diffs - mean[:, None]
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        vectors = vh[:, 0] * mean.norm(dim=-1, keepdim=True)
    else:
        raise ValueError(f"concept vector method must be 'mean' or 'pca', got {method!r}")
    return fix_signs(vectors, pos.double(), neg.double()).float()


def cosine_matrix(vectors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """cos(v_a^l, v_b^l) per layer for every pair of named vector sets [L, d]: [K, K, L]."""
    stacked = torch.stack([v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                           for v in vectors.values()])
    return torch.einsum("ald,bld->abl", stacked, stacked)


# --- linear maps between residual spaces ----------------------------------------------------

@dataclass
class LinearMap:
    """v ↦ v F with F [d_source, d_target] (no bias: ConTrans fits none)."""

    weight: torch.Tensor

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        return (vectors.double() @ self.weight.double()).to(vectors.dtype)

    def error(self, source: torch.Tensor, target: torch.Tensor) -> float:
        """Relative error ‖XF − Y‖_F / ‖Y‖_F on (held-out) state pairs."""
        residual = self(source.double()) - target.double()
        return float(residual.norm() / target.double().norm().clamp_min(1e-12))


def fit_linear_map(source: torch.Tensor, target: torch.Tensor, rcond: float = 1e-7
                   ) -> LinearMap:
    """Least squares F = argmin ‖XF − Y‖² via the SVD X = U Σ Vᵀ, F = V Σ⁺ Uᵀ Y (ConTrans eq. 2,
    App. A; singular values below ``rcond``·σ_max are dropped, as ``lstsq`` does); X [n, d1]
    and Y [n, d2] are states of the same texts in the two models, in float64."""
    if source.dim() != 2 or target.dim() != 2 or len(source) != len(target) or not len(source):
        raise ValueError(f"fit_linear_map needs X [n, d1] and Y [n, d2] with the same n >= 1; "
                         f"got {tuple(source.shape)} and {tuple(target.shape)}")
    u, s, vh = torch.linalg.svd(source.double(), full_matrices=False)
    keep = s > rcond * s.max()
    inverse = torch.where(keep, 1.0 / s.clamp_min(1e-300), torch.zeros_like(s))
    weight = vh.T @ (inverse[:, None] * (u.T @ target.double()))
    return LinearMap(weight)


# --- steering --------------------------------------------------------------------------------

@dataclass
class Addition:
    """α·v added to the residual stream after block ``layer`` at every position."""

    layer: int
    vector: torch.Tensor
    alpha: float = 1.0
    name: str = ""


def _delta_hook(delta: torch.Tensor):
    cast: dict[tuple, torch.Tensor] = {}

    def add(hidden: torch.Tensor) -> torch.Tensor:
        key = (hidden.dtype, hidden.device)
        if key not in cast:
            cast[key] = delta.to(dtype=hidden.dtype, device=hidden.device)
        return hidden + cast[key]

    return add


def _hooks(resolved: sites.Sites, additions: Sequence[Addition]) -> list[tuple[str, Any]]:
    """One hook per layer adding the sum of that layer's α·v."""
    deltas: dict[int, torch.Tensor] = {}
    for a in additions:
        layer = resolved.layer(a.layer)
        vector = a.vector.detach().float().flatten()
        deltas[layer] = deltas.get(layer, torch.zeros_like(vector)) + a.alpha * vector
    return [(f"resid.{layer}", _delta_hook(delta)) for layer, delta in sorted(deltas.items())]


def _as_additions(vectors: Mapping[int, torch.Tensor] | Sequence[Addition], alpha: float
                  ) -> list[Addition]:
    if isinstance(vectors, Mapping):
        return [Addition(layer, v, alpha) for layer, v in vectors.items()]
    return list(vectors)


@contextmanager
def steered(model: nn.Module, vectors: Mapping[int, torch.Tensor] | Sequence[Addition],
            alpha: float = 1.0) -> Iterator[nn.Module]:
    """Inside the block, forward passes and ``generate`` add α·v (``{layer: v}``, or
    `Addition` items with their own α) to the residual stream after those blocks at every
    position; the hooks are removed on exit."""
    additions = _as_additions(vectors, alpha)
    resolved = sites.Sites(model)
    with sites.hooked(resolved, _hooks(resolved, additions)):
        yield model


class _Persistent:
    """The additions attached to one model and the handles of their hooks."""

    ATTR = "_fedprivacy_steering"

    def __init__(self, model: nn.Module):
        self.model, self.additions, self._exit = model, [], None

    @classmethod
    def of(cls, model: nn.Module) -> _Persistent:
        state = getattr(model, cls.ATTR, None)
        if state is None:
            state = cls(model)
            object.__setattr__(model, cls.ATTR, state)
        return state

    def reattach(self) -> None:
        if self._exit is not None:
            self._exit.__exit__(None, None, None)
            self._exit = None
        if self.additions:
            self._exit = steered(self.model, self.additions)
            self._exit.__enter__()


def add_steering(model: nn.Module, addition: Addition) -> None:
    """Attach ``addition`` to ``model`` until :func:`clear_steering`; it is saved by
    :func:`save_steering`."""
    state = _Persistent.of(model)
    state.additions.append(addition)
    state.reattach()


def steering_of(model: nn.Module) -> list[Addition]:
    """The persistent additions attached to ``model`` (in order)."""
    state = getattr(model, _Persistent.ATTR, None)
    return list(state.additions) if state is not None else []


def clear_steering(model: nn.Module) -> None:
    """Remove every persistent addition and its hooks."""
    state = _Persistent.of(model)
    state.additions.clear()
    state.reattach()


def save_steering(model: nn.Module, folder: str | Path) -> bool:
    """Write the model's persistent additions to ``folder`` (vectors as safetensors, layers,
    α and names as JSON); returns whether there were any."""
    from safetensors.torch import save_file

    additions = steering_of(model)
    if not additions:
        return False
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({f"v{i}": a.vector.detach().float().contiguous().cpu()
               for i, a in enumerate(additions)}, str(folder / STEERING_FILE))
    index = [{"key": f"v{i}", "layer": a.layer, "alpha": a.alpha, "name": a.name}
             for i, a in enumerate(additions)]
    (folder / STEERING_INDEX).write_text(json.dumps({"version": 1, "additions": index},
                                                    indent=2))
    return True


def load_steering(model: nn.Module, folder: str | Path) -> list[Addition]:
    """Re-attach the additions saved in ``folder`` (none when it holds no steering files)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / STEERING_INDEX).is_file():
        return []
    index = json.loads((folder / STEERING_INDEX).read_text())
    tensors = load_file(str(folder / STEERING_FILE))
    for row in index["additions"]:
        add_steering(model, Addition(int(row["layer"]), tensors[row["key"]], float(row["alpha"]),
                                     row.get("name", "")))
    return steering_of(model)


def from_pretrained(folder: str | Path, **kwargs: Any) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained(folder)`` with its saved steering re-attached."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    load_steering(model, folder)
    return model
