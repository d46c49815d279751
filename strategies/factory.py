"""Build the server side of a run from the registry: the configured strategy, wrapped by the
server side of every client method in the pipeline (`fedprivacy.methods.registry`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flwr.serverapp.strategy import FedAvg, Strategy

from fedprivacy import wire
from fedprivacy.config import ExperimentConfig
from fedprivacy.methods import registry
from fedprivacy.strategies.guarded import aggregate_client_metrics


@dataclass
class ServerContext:
    """What a method's server builder gets: the config, the server's `GlobalModel` and the
    FedAvg sampling arguments every strategy of the project shares."""

    cfg: ExperimentConfig
    model: Any
    fedavg_args: dict[str, Any]


def fedavg_arguments(cfg: ExperimentConfig) -> dict[str, Any]:
    """FedAvg sampling arguments shared by every strategy of the project."""
    sc = cfg.strategy
    return {"fraction_train": sc.fraction_train, "fraction_evaluate": sc.fraction_evaluate,
            "min_train_nodes": 1, "min_evaluate_nodes": 1 if sc.fraction_evaluate > 0 else 0,
            # GuardedStrategy waits for min_clients nodes, bounded: Flower's own wait is not
            "min_available_nodes": 1, "weighted_by_key": wire.NUM_EXAMPLES,
            "train_metrics_aggr_fn": aggregate_client_metrics,
            "evaluate_metrics_aggr_fn": aggregate_client_metrics}


def build_fedavg(ctx: ServerContext) -> FedAvg:
    """The server side of ``fedavg``."""
    return FedAvg(**ctx.fedavg_args)


def make_strategy(cfg: ExperimentConfig, model: Any) -> Strategy:
    """``strategy.name``'s builder, then the server wrapper of each pipeline method that has one
    (in pipeline order, so the last method's wrapper is the outermost)."""
    ctx = ServerContext(cfg, model, fedavg_arguments(cfg))
    strategy: Strategy = registry.resolve(registry.get(cfg.strategy.name).server)(ctx)
    for name in cfg.client.pipeline:
        method = registry.get(name)
        if method.server is not None:
            strategy = registry.resolve(method.server)(strategy, ctx)
    return strategy
