"""`NeuronEditMerge`: DEPN's edits survive aggregation (`fedprivacy.methods.depn`).

Each DEPN client zeroes its privacy neurons before its update leaves, but averaging with the
other clients' updates brings those columns back (to (n−1)/n of their size with n clients).
The clients therefore also declare the edited neurons' ids and this wrapper zeroes the union of
them in the aggregated arrays. It works on the arrays alone (the site table tells it which
array and axis hold each layer's neurons): it never touches the server's global model, whose
one owner is the ServerApp.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp.strategy import Strategy
from transformers import PreTrainedModel

from fedprivacy import sites, wire
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
        self.down = down_projection_keys(model)
        self.d_ff = sites.ffn_dim(model)

    def summary(self) -> None:
        log(INFO, "\t├──> NeuronEditMerge: DEPN neurons of all clients zeroed after aggregation")
        self.inner.summary()

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        ids = sorted({int(i) for msg in replies if not msg.has_error()
                      for i in msg.content[wire.METRICS].get(NEURONS_KEY, [])})
        if arrays is None or not ids:
            return arrays, metrics
        for layer, columns in neurons_by_layer(ids, self.d_ff).items():
            key, axis = self.down[layer]
            weight = arrays[key].numpy().copy()
            index: list[Any] = [slice(None)] * weight.ndim
            index[axis] = columns
            weight[tuple(index)] = 0
            arrays[key] = Array(np.ascontiguousarray(weight))
        self.record(server_round, depn_union=len(ids), **{UNION_KEY: ids})
        return arrays, metrics


def wrap(strategy: Strategy, ctx: Any) -> NeuronEditMerge:
    """The server side of ``depn`` (`fedprivacy.methods.depn`)."""
    return NeuronEditMerge(strategy, ctx.model.model)
