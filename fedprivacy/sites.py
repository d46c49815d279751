"""Where each architecture family keeps its FFN neurons and its residual stream.

Methods address neurons through :func:`ffn` and residual states through :func:`resid`, never
through module paths. An FFN *neuron* i of layer l is coordinate i of the input of the FFN down
projection (the activation a^l of METHODS.md §1 and β_l of §4); its write-out into the residual
stream is one slice of the down-projection weight along ``neuron_axis`` (a column of an
``nn.Linear`` weight, a row of GPT-2's transposed ``Conv1D`` weight).

Sites have names, as in pyvene and TransformerLens: ``"ffn.<layer>"`` is the FFN activation of
block ``layer`` ([batch, seq, d_ff]) and ``"resid.<layer>"`` the residual stream after it
([batch, seq, d], HF's ``hidden_states[layer + 1]`` below the top block; negative layers count
from the top). :class:`Sites` resolves a model's family and blocks once; :func:`hooked` runs a
block of code with hooks on named sites and :func:`run_with_cache` records named activations,
both removing their hooks on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class UnsupportedArchitectureError(ValueError):
    """The model's architecture is not in the site table."""


@dataclass(frozen=True)
class Family:
    """One row of the site table.

    ``layer_paths`` are tried in order, relative to the model (first for the LM wrapper, then for
    the bare base model); ``down_proj`` is relative to one block. ``flat_ffn``: the block feeds
    its FFN a [batch·seq, d] matrix (OPT) instead of [batch, seq, d].
    """

    name: str
    model_types: tuple[str, ...]
    layer_paths: tuple[str, ...]
    down_proj: str
    neuron_axis: int
    causal: bool
    flat_ffn: bool = False


FAMILIES: tuple[Family, ...] = (
    Family(
        "llama",
        ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "smollm3"),
        ("model.layers", "layers"),
        "mlp.down_proj",
        1,
        True,
    ),
    Family("gpt2", ("gpt2",), ("transformer.h", "h"), "mlp.c_proj", 0, True),
    Family(
        "gpt_neox", ("gpt_neox",), ("gpt_neox.layers", "layers"), "mlp.dense_4h_to_h", 1, True
    ),
    Family("opt", ("opt",), ("model.decoder.layers", "decoder.layers"), "fc2", 1, True, True),
    Family("bert", ("bert",), ("bert.encoder.layer", "encoder.layer"), "output.dense", 1, False),
)


ActivationFn = Callable[[torch.Tensor], torch.Tensor | None]


class _Handles:
    """Removes several hook handles at once (like ``torch.utils.hooks.RemovableHandle``)."""

    def __init__(self, *handles):
        self._handles = handles

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@dataclass(frozen=True)
class FFNSite:
    """The FFN of one block: ``module``'s input is the activation, ``weight`` writes it out."""

    layer: int
    block: nn.Module
    module: nn.Module
    neuron_axis: int
    flat: bool = False

    @property
    def weight(self) -> torch.Tensor:
        """The down-projection weight (a Parameter); neuron i is ``weight.select(axis, i)``."""
        return self.module.weight

    @property
    def d_ff(self) -> int:
        """Number of neurons (the FFN intermediate size)."""
        return self.module.weight.shape[self.neuron_axis]

    def register_hook(self, fn: ActivationFn) -> _Handles:
        """Call ``fn(activation)`` on every forward, with the activation shaped
        [batch, seq, d_ff]; a tensor that ``fn`` returns replaces the activation. Returns a
        handle whose ``remove()`` unregisters the hook."""
        batch_shape: list[torch.Size] = []

        def record_shape(block: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            batch_shape[:] = [hidden.shape[:-1]]

        def on_input(module: nn.Module, args: tuple) -> tuple | None:
            hidden = args[0]
            if self.flat:
                hidden = hidden.reshape(*batch_shape[0], hidden.shape[-1])
            new = fn(hidden)
            if new is None:
                return None
            return (new.reshape(args[0].shape) if self.flat else new, *args[1:])

        handles = [self.module.register_forward_pre_hook(on_input)]
        if self.flat:
            handles.append(self.block.register_forward_pre_hook(record_shape, with_kwargs=True))
        return _Handles(*handles)


@dataclass(frozen=True)
class ResidSite:
    """The block whose output is the residual stream after block ``layer``."""

    layer: int
    module: nn.Module

    def register_hook(self, fn: ActivationFn) -> _Handles:
        """Call ``fn(hidden)`` on every forward with the block's residual output [batch, seq, d];
        a tensor that ``fn`` returns replaces it. Returns a handle whose ``remove()``
        unregisters the hook."""

        def on_output(module: nn.Module, args: tuple, output: Any) -> Any:
            new = fn(self.stream(output))
            return None if new is None else self.replace(output, new)

        return _Handles(self.module.register_forward_hook(on_output))

    @staticmethod
    def stream(output: torch.Tensor | tuple) -> torch.Tensor:
        """The residual stream in a block's forward output (a tensor, or its first element)."""
        return output if isinstance(output, torch.Tensor) else output[0]

    @staticmethod
    def replace(output: torch.Tensor | tuple, hidden: torch.Tensor) -> torch.Tensor | tuple:
        """A block output of the same structure with the residual stream set to ``hidden``."""
        return hidden if isinstance(output, torch.Tensor) else (hidden, *output[1:])


def _supported() -> str:
    return "; ".join(f"{f.name} (model_type {', '.join(f.model_types)})" for f in FAMILIES)


def family(model: nn.Module) -> Family:
    """The site-table row of ``model`` (LM wrapper or bare base model), chosen by its config's
    ``model_type``; :class:`UnsupportedArchitectureError` names the class when there is none."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    raise UnsupportedArchitectureError(
        f"{type(model).__name__} (model_type {model_type!r}) has no FFN/residual site table; "
        f"supported families: {_supported()}"
    )


def _blocks(model: nn.Module, fam: Family) -> nn.ModuleList:
    for path in fam.layer_paths:
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    raise UnsupportedArchitectureError(
        f"{type(model).__name__} is a {fam.name} model but none of {list(fam.layer_paths)} exists"
    )


Site = FFNSite | ResidSite
SITE_KINDS = ("ffn", "resid")


class Sites:
    """The sites of one model, resolved once (family and block list): use it in loops over
    layers instead of the module-level functions, which resolve the model on every call."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.family = family(model)
        self.blocks = _blocks(model, self.family)

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks."""
        return len(self.blocks)

    @property
    def causal(self) -> bool:
        """Whether the family is a causal (decoder-only) LM."""
        return self.family.causal

    @property
    def d_ff(self) -> int:
        """FFN intermediate size (number of neurons per layer), read from layer 0's weight."""
        return self.ffn(0).d_ff

    def layer(self, layer: int) -> int:
        """``layer`` as a non-negative block index (negative indices count from the top)."""
        count = len(self.blocks)
        if not -count <= layer < count:
            raise IndexError(f"layer {layer} out of range for a model with {count} layers")
        return layer % count

    def ffn(self, layer: int) -> FFNSite:
        """The FFN site of block ``layer``."""
        layer = self.layer(layer)
        block = self.blocks[layer]
        fam = self.family
        return FFNSite(layer, block, block.get_submodule(fam.down_proj), fam.neuron_axis,
                       fam.flat_ffn)

    def resid(self, layer: int) -> ResidSite:
        """The residual-stream site after block ``layer`` (``hidden_states[layer + 1]`` in HF)."""
        layer = self.layer(layer)
        return ResidSite(layer, self.blocks[layer])

    def site(self, name: str) -> Site:
        """The site called ``name``: ``"ffn.<layer>"`` or ``"resid.<layer>"``."""
        kind, _, index = name.partition(".")
        try:
            layer = int(index)
        except ValueError:
            layer = None
        if kind not in SITE_KINDS or layer is None:
            raise ValueError(f"site name {name!r} is not one of "
                             f"{', '.join(k + '.<layer>' for k in SITE_KINDS)}")
        return self.ffn(layer) if kind == "ffn" else self.resid(layer)


def _resolved(model: nn.Module | Sites) -> Sites:
    return model if isinstance(model, Sites) else Sites(model)


def blocks(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks of ``model``."""
    return Sites(model).blocks


def num_layers(model: nn.Module) -> int:
    """Number of transformer blocks."""
    return Sites(model).num_layers


def ffn(model: nn.Module, layer: int) -> FFNSite:
    """The FFN site of block ``layer`` (negative indices count from the top)."""
    return Sites(model).ffn(layer)


def resid(model: nn.Module, layer: int) -> ResidSite:
    """The residual-stream site after block ``layer`` (``hidden_states[layer + 1]`` in HF)."""
    return Sites(model).resid(layer)


Hooks = Mapping[str, ActivationFn] | Iterable[tuple[str, ActivationFn]]


@contextmanager
def hooked(model: nn.Module | Sites, hooks: Hooks) -> Iterator[Sites]:
    """Inside the ``with`` block, every forward pass calls the hooks on their named sites
    (``{"resid.3": fn, "ffn.1": fn2}``, or (name, fn) pairs to hook one site twice; see
    ``FFNSite.register_hook`` and ``ResidSite.register_hook``). The hooks are removed on exit,
    also on an exception. Yields the resolved :class:`Sites`."""
    resolved = _resolved(model)
    pairs = list(hooks.items() if isinstance(hooks, Mapping) else hooks)
    targets = [resolved.site(name) for name, _ in pairs]  # every name checked before any hook
    handles: list[_Handles] = []
    try:
        for site, (_, fn) in zip(targets, pairs):
            handles.append(site.register_hook(fn))
        yield resolved
    finally:
        for handle in reversed(handles):
            handle.remove()


def run_with_cache(model: nn.Module, names: Sequence[str], hooks: Hooks = (),
                   **inputs: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Run ``model(**inputs)`` once with ``hooks`` (as in :func:`hooked`) and record the
    activations of the sites ``names``, detached, as the model used them (after the hooks).

    Returns the output's ``logits`` (the whole output when it has none, e.g. a bare base
    model) and ``{name: activation}``. Gradient and train/eval modes are the caller's.
    """
    cache: dict[str, torch.Tensor] = {}

    def recorder(name: str) -> ActivationFn:
        def record(activation: torch.Tensor) -> None:
            cache[name] = activation.detach()

        return record

    pairs = list(hooks.items() if isinstance(hooks, Mapping) else hooks)
    with hooked(model, pairs + [(name, recorder(name)) for name in names]):
        output = model(**inputs)
    return getattr(output, "logits", output), cache


def ffn_dim(model: nn.Module) -> int:
    """FFN intermediate size (number of neurons per layer), read from layer 0's weight."""
    return Sites(model).d_ff


def is_causal(model: nn.Module) -> bool:
    """Whether the family is a causal (decoder-only) LM: position t sees only positions ≤ t."""
    return family(model).causal
