"""`NeuronEditMerge`: DEPN's edits survive aggregation.

Each DEPN client zeroes its privacy neurons before its update leaves, but averaging with the
other clients' updates brings those columns back (to (n−1)/n of their size with n clients).
The clients therefore also declare the edited neurons' ids (``depn.neurons``: layer·d_ff +
index, metadata about the model, no data) and this wrapper zeroes the union of them in the
aggregated model. This is the project's choice; DEPN itself is a centralised method.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from transformers import PreTrainedModel

from fedprivacy import sites
from fedprivacy.editing import scale_neurons
from fedprivacy.privacy.depn import neurons_by_layer
from fedprivacy.models import cpu_state_dict

NEURONS_KEY = "depn.neurons"


class NeuronEditMerge(Strategy):
    """Wraps a strategy; zeroes every reported privacy neuron in the aggregated model."""

    def __init__(self, inner: Strategy, model: PreTrainedModel) -> None:
        self.inner, self.model = inner, model
        self.round_info: dict[int, dict[str, Any]] = {}

    def summary(self) -> None:
        log(INFO, "\t├──> NeuronEditMerge: DEPN neurons of all clients zeroed after aggregation")
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        ids = {int(i) for msg in replies if not msg.has_error()
               for i in msg.content["metrics"].get(NEURONS_KEY, [])}
        if arrays is None or not ids:
            return arrays, metrics
        d_ff = sites.ffn_dim(self.model)
        self.model.load_state_dict(arrays.to_torch_state_dict())
        scale_neurons(self.model, neurons_by_layer(ids, d_ff), 0.0)
        self.round_info[server_round] = {"depn_union": len(ids)}
        return ArrayRecord(cpu_state_dict(self.model)), metrics
