"""Integrated gradients over FFN neurons, shared by DEPN and IRCAN.

For one layer l, one patched position p and a target f = Σ_y P(y | x, a^l_p := v) read at p,
the Riemann form of integrated gradients from a baseline a' to the natural activation a is
(METHODS.md §1 eq. 1; §4 eq. 3–5 with a' = 0)::

    standard:  Att = (a − a')/m ⊙ Σ_k ∇_v f(a' + α_k (a − a'))
    endpoint:  Att = (a − a')/m ⊙ Σ_k α_k ∇_v f(a' + α_k (a − a'))   (IRCAN code: ∂/∂a)

with α_k = k/m on the grid k = 0…m−1 ("left") or k = 1…m ("right"). The whole d_ff-vector of
layer l at position p is interpolated jointly; only that position of that layer is patched.

All m steps, and several layers at once, run as one batch: the batch holds m rows per layer and
the hook of layer l patches only its own rows. For causal LMs the target at p depends only on
positions ≤ p, so the *fast path* runs the prefix ``input_ids[:p]`` once into a KV cache and the
batch holds a single token per row.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from fedprivacy import sites
from fedprivacy.lm import evaluating

Grid = Literal["left", "right"]
Variant = Literal["standard", "endpoint"]
Targets = Mapping[int, int | Sequence[int]]


def step_alphas(steps: int, grid: Grid = "left") -> torch.Tensor:
    """The interpolation coefficients α_k = k/m of the Riemann sum (float64, shape [m])."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if grid not in ("left", "right"):
        raise ValueError(f"grid must be 'left' or 'right', got {grid!r}")
    start = 0 if grid == "left" else 1
    return torch.arange(start, start + steps, dtype=torch.float64) / steps


@contextmanager
def patch_ffn(
    model: nn.Module, layer: int, position: int, value: torch.Tensor
) -> Iterator[None]:
    """Inside the ``with`` block, every forward pass sees layer ``layer``'s FFN activation at
    ``position`` set to ``value`` ([d_ff], or [batch, d_ff] with one row per sequence)."""

    def patch(hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.clone()
        hidden[:, position] = value.to(hidden.dtype)
        return hidden

    with sites.hooked(model, {f"ffn.{layer}": patch}):
        yield


def _as_batch(input_ids: torch.Tensor) -> torch.Tensor:
    return input_ids.unsqueeze(0) if input_ids.dim() == 1 else input_ids


def _layer_list(resolved: sites.Sites, layers: int | Sequence[int] | None) -> list[int]:
    if layers is None:
        return list(range(resolved.num_layers))
    items = [layers] if isinstance(layers, int) else list(layers)
    return [resolved.layer(layer) for layer in items]


def ffn_activations(
    model: nn.Module,
    input_ids: torch.Tensor,
    layers: int | Sequence[int] | None = None,
    positions: int | Sequence[int] = -1,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """FFN activations a^l (inputs of the down projection) at ``positions``, from one forward.

    Shape [batch, layers, positions, d_ff]; an int ``layers`` or ``positions`` drops its axis
    and 1-D ``input_ids`` drops the batch axis, as in tensor indexing. Negative positions count
    from the end (with left padding, -1 is every row's last token).
    """
    batch = _as_batch(input_ids)
    resolved = sites.Sites(model)
    layer_ids = _layer_list(resolved, layers)
    pos = torch.as_tensor([positions] if isinstance(positions, int) else list(positions))
    seen: dict[int, torch.Tensor] = {}

    def recorder(layer: int) -> sites.ActivationFn:
        def record(hidden: torch.Tensor) -> None:
            seen[layer] = hidden[:, pos].detach()

        return record

    recorders = [(f"ffn.{layer}", recorder(layer)) for layer in layer_ids]
    with sites.hooked(resolved, recorders), evaluating(model):
        model(input_ids=batch, attention_mask=attention_mask)
    acts = torch.stack([seen[layer] for layer in layer_ids], dim=1)
    if isinstance(positions, int):
        acts = acts[:, :, 0]
    if isinstance(layers, int):
        acts = acts[:, 0]
    return acts[0] if input_ids.dim() == 1 else acts


class _Runner:
    """Forward passes over one sequence that read the logits at one position p.

    The plain path feeds the whole sequence and patches/reads position p. The fast path (causal
    LMs) feeds the sequence once, incrementally, into a KV cache (:meth:`advance`) and the batch
    feeds only token p on top of the cache of ``input_ids[:p]``: layers below the patch run once
    for the prefix, and each row of the batch costs one token.
    """

    def __init__(self, model: nn.Module, input_ids: torch.Tensor, fast: bool):
        self.model = model
        self.input_ids = input_ids
        self.fast = fast
        self.cache = None
        self.fed = 0
        self.position = 0

    def advance(self, position: int) -> None:
        """Read at ``position`` next; the fast path caches the prefix (positions only grow)."""
        if self.fast and position > self.fed:
            out = self.model(
                input_ids=self.input_ids[:, self.fed : position],
                past_key_values=self.cache,
                use_cache=True,
            )
            self.cache, self.fed = out.past_key_values, position
        self.position = position

    @property
    def patch_position(self) -> int:
        """Where the patched position sits in the tokens that :meth:`logits` feeds."""
        return 0 if self.fast else self.position

    def logits(self, rows: int) -> torch.Tensor:
        """Logits [rows, vocab] at the read position for ``rows`` copies of the sequence."""
        if not self.fast:
            out = self.model(input_ids=self.input_ids.expand(rows, -1))
            return out.logits[:, self.position]
        cache = None
        if self.cache is not None:
            cache = copy.deepcopy(self.cache)
            cache.batch_repeat_interleave(rows)
        token = self.input_ids[:, self.position : self.position + 1].expand(rows, -1)
        out = self.model(input_ids=token, past_key_values=cache, use_cache=cache is not None)
        return out.logits[:, -1]


class _Interpolation:
    """Activation hook for the m rows of one layer: it reads the rows' natural activation a
    (nothing below is patched in them) and replaces it by the leaf a' + α_k (a − a')."""

    def __init__(self, rows: slice, position: int, start: torch.Tensor, alpha: torch.Tensor):
        self.rows, self.position, self.start, self.alpha = rows, position, start, alpha
        self.end: torch.Tensor | None = None
        self.points: torch.Tensor | None = None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        end = hidden[self.rows.start, self.position].detach().to(self.alpha.dtype)
        self.end = end
        self.points = (self.start + self.alpha * (end - self.start)).requires_grad_(True)
        hidden = hidden.clone()
        hidden[self.rows, self.position] = self.points.to(hidden.dtype)
        return hidden


def _ig_at_position(
    resolved: sites.Sites,
    runner: _Runner,
    token_ids: list[int],
    layers: list[int],
    baseline: torch.Tensor,
    alphas: torch.Tensor,
    variants: tuple[Variant, ...],
    batch_size: int,
) -> torch.Tensor:
    """IG [len(variants), len(layers), d_ff] of Σ_y P(y) at the runner's position (module
    docstring); the variants share the gradients and differ only in their step weights."""
    steps = alphas.numel()
    reference = resolved.ffn(layers[0]).weight
    dtype = torch.promote_types(reference.dtype, torch.float32)
    alpha = alphas.to(reference.device, dtype)[:, None]
    weights = [alpha if v == "endpoint" else torch.ones_like(alpha) for v in variants]
    start = baseline.to(reference.device, dtype)
    start = torch.broadcast_to(start, (len(layers), start.shape[-1]))
    per_chunk = max(1, batch_size // steps)
    position = runner.patch_position
    out = []
    for lo in range(0, len(layers), per_chunk):
        chunk = range(lo, min(lo + per_chunk, len(layers)))
        hooks = [
            _Interpolation(slice(i * steps, (i + 1) * steps), position, start[j], alpha)
            for i, j in enumerate(chunk)
        ]
        named = [(f"ffn.{layers[j]}", h) for j, h in zip(chunk, hooks)]
        with sites.hooked(resolved, named), torch.enable_grad():
            logits = runner.logits(len(hooks) * steps)
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            target = torch.softmax(logits, dim=-1)[:, token_ids].sum()
            grads = torch.autograd.grad(target, [h.points for h in hooks])
        out += [
            torch.stack([(h.end - start[j]) / steps * (w * g).sum(0) for w in weights])
            for j, h, g in zip(chunk, hooks, grads)
        ]
    return torch.stack(out, dim=1)


def integrated_gradients(
    model: nn.Module,
    input_ids: torch.Tensor,
    targets: Targets,
    layers: int | Sequence[int] | None = None,
    *,
    baseline: torch.Tensor | None = None,
    steps: int = 20,
    grid: Grid = "left",
    variant: Variant | Sequence[Variant] = "standard",
    fast: bool | None = None,
    batch_size: int = 256,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Integrated gradients of FFN neurons for the probability of target tokens.

    Args:
        model: an LM with logits (causal LM or masked LM) in the site table.
        input_ids: one unpadded sequence, [T] or [1, T].
        targets: ``{position: token id(s)}``; for each position p the activation at p is
            patched and the target is Σ_ids P(id | logits at p). Results are summed over
            positions (DEPN eq. 3 sums over private tokens). Negative positions count from
            the end. For a causal LM, the token at t is predicted at position t − 1.
        layers: one layer (result [d_ff]), several ([len, d_ff]) or all (None).
        baseline: a' — None for zeros (DEPN), else the start activation ([d_ff] or
            [len(layers), d_ff]; IRCAN's without-context activation).
        steps: m, the number of Riemann steps, run as one batch.
        grid: "left" (α = 0…(m−1)/m) or "right" (α = 1/m…1).
        variant: "standard" IG (∇ at the interpolated point) or "endpoint" (∇ w.r.t. the end
            point, as the IRCAN code does: each term weighted by α_k); a sequence of them
            computes all from the same gradients and returns ``{variant: result}``.
        fast: use the prefix-cache path (default: whenever the family is causal).
        batch_size: rows per forward pass; one layer's m steps are never split.

    Returns:
        [d_ff] for an int ``layers``, else [len(layers), d_ff]; on the model's device, in
        float32 or the model's wider float type (a dict of them for several variants).
    """
    variants = (variant,) if isinstance(variant, str) else tuple(variant)
    for v in variants:
        if v not in ("standard", "endpoint"):
            raise ValueError(f"variant must be 'standard' or 'endpoint', got {v!r}")
    batch = _as_batch(input_ids)
    if batch.shape[0] != 1:
        raise ValueError(f"integrated_gradients takes one sequence, got shape {tuple(batch.shape)}")
    resolved = sites.Sites(model)
    causal = resolved.causal
    fast = causal if fast is None else fast
    if fast and not causal:
        raise ValueError(f"the fast path needs a causal LM; {type(model).__name__} is not")
    if not targets:
        raise ValueError("targets is empty")
    layer_ids = _layer_list(resolved, layers)
    alphas = step_alphas(steps, grid)
    d_ff = resolved.ffn(layer_ids[0]).d_ff
    start = torch.zeros(d_ff) if baseline is None else baseline.detach()
    length = batch.shape[1]
    grouped: dict[int, list[int]] = {}
    for position, ids in targets.items():
        if not -length <= position < length:
            raise IndexError(f"target position {position} outside a sequence of {length}")
        grouped.setdefault(position % length, []).extend([ids] if isinstance(ids, int) else ids)
    runner = _Runner(model, batch, fast)
    total = None
    with evaluating(model, gradients=True):
        for position in sorted(grouped):
            runner.advance(position)
            att = _ig_at_position(
                resolved, runner, grouped[position], layer_ids, start, alphas, variants,
                batch_size
            )
            total = att if total is None else total + att
    if isinstance(layers, int):
        total = total[:, 0]
    return total[0] if isinstance(variant, str) else dict(zip(variants, total))
