"""`LocalOnly`: the local-only baseline's server (`fedprivacy.methods.local`).

FedAvg runs for the record, but every train and evaluate message asks the client to use and
keep its own model (``local.keep-model``), so clients never take the average.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedprivacy.methods.local import KEEP_MODEL_KEY


class LocalOnly(FedAvg):
    """FedAvg whose clients train and evaluate their own models."""

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config[KEEP_MODEL_KEY] = True
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        config[KEEP_MODEL_KEY] = True
        return super().configure_evaluate(server_round, arrays, config, grid)


def build(ctx: Any) -> LocalOnly:
    return LocalOnly(**ctx.fedavg_args)
