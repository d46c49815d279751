"""Scale FFN neurons in place, with exact undo and a record that is saved with the model.

Scaling neuron i of layer l by β scales its slice of the down-projection weight (a column of a
``Linear``, a row of GPT-2's ``Conv1D``), which multiplies its activation by β at every position
and every generation step: β = 0 is DEPN's editor (METHODS.md §4, step 4), β > 1 IRCAN's
reweighting (§1, step 5). Each edit is appended to ``model.config.fedprivacy_edits`` as
``{"layer", "indices", "factor"}``, so ``save_pretrained``/``from_pretrained`` keep the edited
weights and the record of what was edited.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from fedprivacy import sites

EDITS_KEY = "fedprivacy_edits"


class EditHandle:
    """The edits made by one :func:`scale_neurons` call; :meth:`undo` restores the weights."""

    def __init__(self, model: nn.Module, records: list[dict], saved: list[torch.Tensor]):
        self.model = model
        self.records = records
        self._saved = saved
        self.active = True

    def undo(self) -> None:
        """Restore the original weights bit-exactly and drop this edit's records.

        Undo overlapping edits in reverse order of application.
        """
        if not self.active:
            raise RuntimeError("this edit was already undone")
        log = getattr(self.model.config, EDITS_KEY)
        resolved = sites.Sites(self.model)
        for record, original in zip(reversed(self.records), reversed(self._saved)):
            site = resolved.ffn(record["layer"])
            index = torch.tensor(record["indices"], device=site.weight.device)
            with torch.no_grad():
                site.weight.index_copy_(site.neuron_axis, index, original)
            if record in log:
                log.remove(record)
        self.active = False


def recorded_edits(model: nn.Module) -> list[dict]:
    """The edits recorded in ``model.config`` (oldest first), e.g. after ``from_pretrained``."""
    return list(getattr(model.config, EDITS_KEY, None) or [])


def scale_neurons(
    model: nn.Module, neurons: Mapping[int, Sequence[int]], factor: float
) -> EditHandle:
    """Multiply the given FFN neurons ``{layer: [index, ...]}`` by ``factor`` (0 zeroes them)."""
    plan = []
    resolved = sites.Sites(model)
    for layer, indices in neurons.items():
        site = resolved.ffn(layer)
        unique = sorted({int(i) for i in indices})
        if unique and (unique[0] < 0 or unique[-1] >= site.d_ff):
            raise IndexError(f"neuron indices of layer {site.layer} must lie in [0, {site.d_ff})")
        if unique:
            plan.append((site, unique))
    records: list[dict] = []
    saved: list[torch.Tensor] = []
    log = recorded_edits(model)
    for site, unique in plan:
        index = torch.tensor(unique, device=site.weight.device)
        with torch.no_grad():
            original = site.weight.index_select(site.neuron_axis, index).clone()
            site.weight.index_copy_(site.neuron_axis, index, original * factor)
        record = {"layer": site.layer, "indices": unique, "factor": float(factor)}
        records.append(record)
        saved.append(original)
        log.append(record)
    setattr(model.config, EDITS_KEY, log)
    return EditHandle(model, records, saved)
