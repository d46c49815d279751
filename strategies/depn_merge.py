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

Per-client utility guards do not bound the cost of the union (zeroing several clients' neurons
together costs more than the sum of their parts), so with ``client.depn.union_budget`` a
`UnionGuard` keeps the union's neurons, ranked round robin over the clients' rankings, while
the server's own PII-free dev text (`evaluation.server_dev_set`, disjoint from the eval text it
reports) says the zeroed aggregate stays within the budget.
"""

from __future__ import annotations

import copy
import math
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
from fedprivacy.evaluation import evaluate_loss, server_dev_set
from fedprivacy.methods.depn import METHOD, NEURONS_KEY, UNION_KEY
from fedprivacy.privacy.depn import (
    PrivacyNeurons,
    apply_depn,
    guard_held_out,
    neuron_ids,
    neuron_pairs,
    neurons_by_layer,
    round_robin_union,
)
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


class UnionGuard:
    """The server's utility guard on the merged union: `guard_held_out` on a scratch copy of
    the model holding the aggregate (the global model itself is the ServerApp's)."""

    def __init__(self, model: PreTrainedModel, dev: dict, budget: float, batch_size: int,
                 search: str = "greedy") -> None:
        self.model = copy.deepcopy(model)
        self.dev, self.budget, self.batch_size, self.search = dev, budget, batch_size, search

    def __call__(self, arrays: ArrayRecord, ids: list[int]) -> tuple[list[int], float]:
        """The ranked ``ids`` the guard keeps within the budget, in rank order, and the
        relative dev perplexity change that zeroing it costs."""
        adapters.load_wire(self.model, arrays)
        base = adapters.base_of(self.model)
        d_ff = sites.ffn_dim(base)
        kept = guard_held_out(base, PrivacyNeurons(neuron_pairs(ids, d_ff)), self.dev,
                              self.budget, self.batch_size, self.search)
        before = self.dev_loss()
        handle = apply_depn(base, kept)
        change = math.expm1(self.dev_loss() - before)
        handle.undo()
        return neuron_ids(kept.neurons, d_ff), change

    def dev_loss(self) -> float:
        return evaluate_loss(self.model, self.dev, self.batch_size)[0]


class NeuronEditMerge(StrategyWrapper):
    """Wraps a strategy; zeroes the reported privacy neurons in the aggregated arrays: all of
    them, or those a ``guard`` keeps."""

    def __init__(self, inner: Strategy, model: PreTrainedModel, guard: UnionGuard | None = None) -> None:
        super().__init__(inner)
        self.guard = guard
        self.adapter = adapters.has_adapter(model)
        if self.adapter:
            adapters.check_frozen_ffn(model)
        base = adapters.base_of(model)
        self.down = down_projection_keys(base)
        self.d_ff = sites.ffn_dim(base)
        self.base_edits: list[int] = []  # with an adapter: the ids the sent arrays carry

    def summary(self) -> None:
        log(INFO, "\t├──> NeuronEditMerge: DEPN neurons of all clients zeroed after aggregation"
            + (f" (server guard: +{self.guard.budget:.1%} dev perplexity)" if self.guard else ""))
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
        frozen = set(self.base_edits)
        proposed = [i for i in round_robin_union(
            [int(i) for i in msg.content[wire.METRICS].get(NEURONS_KEY, [])]
            for msg in replies if not msg.has_error()) if i not in frozen]
        if arrays is None or not (proposed or frozen):
            return arrays, metrics
        kept, guarded = proposed, {}
        if self.guard is not None and proposed:
            kept, change = self.guard(arrays, proposed)
            guarded = {"depn_dev_ppl_change": change}
        ids = sorted(frozen | set(kept)) if self.adapter else sorted(kept)
        if self.adapter:
            arrays[wire.BASE_EDITS] = Array(np.asarray(ids, dtype=np.int64))
        elif ids:
            self._zero_columns(arrays, ids)
        self.record(server_round, depn_union=len(ids), depn_proposed=len(proposed),
                    **guarded, **{UNION_KEY: ids})
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
    """The server side of ``depn`` (`fedprivacy.methods.depn`), with a `UnionGuard` unless
    ``client.depn.union_budget`` is negative."""
    settings = METHOD.settings_of(ctx.cfg)
    guard = None if settings.union_budget < 0 else UnionGuard(
        ctx.model.model, server_dev_set(ctx.cfg, ctx.model.tokenizer, "client.depn.union_budget"),
        settings.union_budget, ctx.cfg.train.eval_batch_size, settings.guard_search)
    return NeuronEditMerge(strategy, ctx.model.model, guard)
