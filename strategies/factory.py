"""Build the configured strategy (the server side of a run) from the experiment config."""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import FedAvg, Strategy
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedprivacy.config import ExperimentConfig
from strategies.depn_merge import NeuronEditMerge
from strategies.fewfedweight import FewFedWeight
from strategies.guarded import aggregate_client_metrics


def fedavg_arguments(cfg: ExperimentConfig) -> dict[str, Any]:
    """FedAvg sampling arguments shared by every strategy of the project."""
    sc = cfg.strategy
    return {"fraction_train": sc.fraction_train, "fraction_evaluate": sc.fraction_evaluate,
            "min_train_nodes": 1, "min_evaluate_nodes": 1 if sc.fraction_evaluate > 0 else 0,
            "min_available_nodes": sc.min_clients,
            "train_metrics_aggr_fn": aggregate_client_metrics,
            "evaluate_metrics_aggr_fn": aggregate_client_metrics}


def make_strategy(cfg: ExperimentConfig, model: PreTrainedModel,
                  tokenizer: PreTrainedTokenizerBase) -> Strategy:
    """``strategy.name`` -> a Message-API strategy.

    ``local`` runs FedAvg on the server for the record, but its clients train and evaluate
    their own model from round to round (`clients.job.ClientJob.local_only`). With DEPN
    clients, `NeuronEditMerge` zeroes their reported privacy neurons after aggregation.
    """
    strategy: Strategy = FedAvg(**fedavg_arguments(cfg))
    if cfg.strategy.name == "fewfedweight":
        strategy = FewFedWeight(cfg.strategy.fewfedweight, model, tokenizer, cfg.seed,
                                **fedavg_arguments(cfg))
    if "depn" in cfg.client.steps:
        strategy = NeuronEditMerge(strategy, model)
    return strategy
