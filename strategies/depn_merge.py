"""`NeuronEditMerge`: DEPN's edits survive aggregation (`fedprivacy.methods.depn`).

Each DEPN client zeroes its privacy neurons before its update leaves, but averaging with the
other clients' updates brings those columns back (to (n−1)/n of their size with n clients).
The clients therefore also declare the edited neurons' ids and this wrapper zeroes the union of
them in the aggregated arrays. It works on the arrays alone (the site table tells it which
array and axis hold each layer's neurons): it never touches the server's global model, whose
one owner is the ServerApp.

With an adapter (``model.adapter``) the down projections are in the frozen base, not in the
arrays: the aggregate then carries the ids of every neuron zeroed so far (`wire.BASE_EDITS`,
the union over the rounds, since a frozen column cannot come back), and each load of the arrays
(the server's model, every client's) zeroes them in the base (`fedprivacy.adapters`).
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from transformers import PreTrainedModel

from fedprivacy import adapters, sites, wire
from fedprivacy.methods.depn import NEURONS_KEY, UNION_KEY
from fedprivacy.privacy.depn import neurons_by_layer
from fedprivacy.strategies.wrapper import StrategyWrapper


def down_projection_keys(model: PreTrainedModel) -> dict[int, tuple[str, int]]:
    """``{layer: (state-dict key of its down projection, neuron axis)}``."""
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    view = sites.Sites(model)  # the site table resolved once
    out = {}
    for layer in range(view.num_layers):
        site = view.ffn(layer)
        out[layer] = (names[id(site.weight)], site.neuron_axis)
    return out


class NeuronEditMerge(StrategyWrapper):
    """Wraps a strategy; zeroes every reported privacy neuron in the aggregated arrays."""

    def __init__(self, inner: Strategy, model: PreTrainedModel) -> None:
        super().__init__(inner)
        self.adapter = adapters.has_adapter(model)
        if self.adapter:
            adapters.check_frozen_ffn(model)
        base = adapters.base_of(model)
        self.down = down_projection_keys(base)
        self.d_ff = sites.ffn_dim(base)
        self.base_edits: list[int] = []  # with an adapter: the ids the sent arrays carry

    def summary(self) -> None:
        log(INFO, "\t├──> NeuronEditMerge: DEPN neurons of all clients zeroed after aggregation")
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.base_edits = (arrays[wire.BASE_EDITS].numpy().tolist()
                           if wire.BASE_EDITS in arrays else [])
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        ids = sorted({int(i) for msg in replies if not msg.has_error()
                      for i in msg.content[wire.METRICS].get(NEURONS_KEY, [])})
        if self.adapter:
            ids = sorted(set(self.base_edits) | set(ids))
        if arrays is None or not ids:
            return arrays, metrics
        if self.adapter:
            arrays[wire.BASE_EDITS] = Array(np.asarray(ids, dtype=np.int64))
        else:
            self._zero_columns(arrays, ids)
        self.record(server_round, depn_union=len(ids), **{UNION_KEY: ids})
        return arrays, metrics

    def _zero_columns(self, arrays: ArrayRecord, ids: list[int]) -> None:
        """Zero the neurons ``ids`` in the down projections the arrays hold."""
        for layer, columns in neurons_by_layer(ids, self.d_ff).items():
            key, axis = self.down[layer]
            weight = arrays[key].numpy().copy()
            index: list[Any] = [slice(None)] * weight.ndim
            index[axis] = columns
            weight[tuple(index)] = 0
            arrays[key] = Array(np.ascontiguousarray(weight))


def wrap(strategy: Strategy, ctx: Any) -> NeuronEditMerge:
    """The server side of ``depn`` (`fedprivacy.methods.depn`)."""
    return NeuronEditMerge(strategy, ctx.model.model)
