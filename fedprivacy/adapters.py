"""LoRA adapters (``model.adapter=lora``, HF PEFT): what crosses the wire and what is saved.

With an adapter every copy of the model (the server's and each client's) is the same frozen
base, wrapped by `peft.get_peft_model`: only the adapter's weights (LoRA's A and B, Hu et al.
2021) train, cross the wire and are aggregated; FedAvg averages A and B separately, as
FedIT/OpenFedLLM do. The saved model is the merged one (``W + (alpha / r) B A``,
`peft.PeftModel.merge_and_unload`), a plain transformers model. Without an adapter the wire
carries the full state dict, as before.

The base is frozen, so an edit of it (DEPN's zeroed FFN neurons) cannot travel in the
adapter: the server's arrays carry the ids of the zeroed neurons (`wire.BASE_EDITS`) and
every `load_wire` zeroes them in the base it loads into.
"""

from __future__ import annotations

import sys

import torch
from flwr.app import ArrayRecord
from torch import nn

from fedprivacy import wire
from fedprivacy.config import ModelConfig

LORA_MARK = "lora_"  # every LoRA parameter's state-dict key holds it (lora_A, lora_B)


def wrap(model: nn.Module, mc: ModelConfig, seed: int) -> nn.Module:
    """``model`` with a seeded LoRA adapter on ``model.lora_targets`` (base frozen), or
    ``model`` itself when ``model.adapter=none``."""
    if mc.adapter == "none":
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=mc.lora_r, lora_alpha=mc.lora_alpha, lora_dropout=mc.lora_dropout,
                      target_modules=list(mc.lora_targets), bias="none", task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return get_peft_model(model, lora)
        except ValueError as err:  # PEFT: no module matches target_modules
            raise ValueError(f"model.lora_targets: {err}") from err


def has_adapter(model: nn.Module) -> bool:
    """Whether ``model`` carries a PEFT adapter (never imports PEFT: a model cannot carry one
    before it is imported)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def base_of(model: nn.Module) -> nn.Module:
    """The transformers model under the adapter (its LoRA layers stay in its forward), where
    the site table (`fedprivacy.sites`) and the neuron edits apply; ``model`` without one."""
    return model.get_base_model() if has_adapter(model) else model


def check_frozen_ffn(model: nn.Module) -> None:
    """Raise a ValueError naming ``model.lora_targets`` when LoRA adapts an FFN down
    projection: a neuron zeroed in the frozen base would come back through the adapter."""
    from fedprivacy import sites

    view = sites.Sites(base_of(model))
    adapted = [layer for layer in range(view.num_layers)
               if hasattr(view.ffn(layer).module, "base_layer")]  # a PEFT tuner layer
    if adapted:
        raise ValueError(f"model.lora_targets: DEPN zeroes the FFN down projection's neurons "
                         f"in the frozen base, so LoRA must not adapt it (it does in layers "
                         f"{adapted}); drop that module from model.lora_targets")


def zero_base_neurons(model: nn.Module, ids: list[int]) -> None:
    """Zero the FFN neurons with flat ids ``ids`` in ``model``'s base (`fedprivacy.editing`)."""
    from fedprivacy import sites
    from fedprivacy.editing import scale_neurons
    from fedprivacy.privacy.depn import neurons_by_layer

    base = base_of(model)
    scale_neurons(base, neurons_by_layer(ids, sites.ffn_dim(base)), 0.0)


def wire_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights that cross the wire, on the CPU: the adapter's with an adapter, else all."""
    state = model.state_dict()
    if has_adapter(model):
        state = {k: v for k, v in state.items() if LORA_MARK in k}
    return {k: v.detach().cpu() for k, v in state.items()}


def load_wire(model: nn.Module, arrays: ArrayRecord) -> None:
    """Load wire arrays into ``model``: exactly its adapter and the base's edits
    (`wire.BASE_EDITS`), or all of its weights."""
    state = arrays.to_torch_state_dict()
    if not has_adapter(model):
        model.load_state_dict(state)
        return
    edits = state.pop(wire.BASE_EDITS, None)
    expected = set(wire_state(model))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"model.adapter=lora: the arrays are not this model's adapter "
                         f"(missing {missing[:3]}, unexpected {extra[:3]})")
    model.load_state_dict(state, strict=False)
    if edits is not None:
        zero_base_neurons(model, edits.tolist())


def merged(model: nn.Module) -> nn.Module:
    """The plain transformers model with the adapter merged into the base
    (`peft.PeftModel.merge_and_unload`, in place: ``model`` is used up); ``model`` itself when
    it has no adapter."""
    return model.merge_and_unload() if has_adapter(model) else model


def num_bytes(arrays: ArrayRecord) -> int:
    """Bytes of the arrays as a message carries them (Flower's ``Array.data``: each array's
    ``.npy`` bytes, its 128-byte header included)."""
    return sum(len(a.data) for a in arrays.values())
