"""FewFedWeight (Dong et al., arXiv 2212.08354) as a Flower Message-API strategy.

The paper is known from its abstract only; this is the project's documented reconstruction
(METHODS.md §7, DESIGN.md "Where the papers are silent"), each part named in the config:

1. Task metadata: before round 1 the server sends a ``query`` message to every node and gets
   its task's public description (instruction, label space / answer format, template). No
   example crosses the wire.
2. Pseudo data: each round (from ``pseudo_start_round`` on: the first global model is the
   random initialisation) the current global model generates ``pseudo_count`` samples for each
   distinct task (`fedprivacy.pseudo.generate_pseudo_samples`), scores them by energy
   E(x) = −T·logsumexp(f(x)/T) and turns the energies into sample weights
   (``sample_weighting``, default softmax of −E). Samples and weights travel in that client's
   train ``ConfigRecord``.
3. Clients mix their few-shot data with the weighted pseudo samples and report ``val_score``,
   their validation score on their own held-out split.
4. Adaptive aggregation: client weights from the reported scores (``client_weighting``,
   default softmax over scores / τ), applied by a streaming in-place weighted average
   (`fedprivacy.aggregation.StreamingAverage`) that makes no per-client copy of the model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from logging import INFO
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedprivacy import wire
from fedprivacy.aggregation import StreamingAverage, client_weights
from fedprivacy.data.records import derive_seed
from fedprivacy.methods.fewfedweight import LOSS_WEIGHT_KEY, FewFedWeightConfig
from fedprivacy.pseudo import generate_pseudo_samples, pseudo_to_config, weight_samples
from fedprivacy.strategies.query import query_nodes
from fedprivacy.strategies.wrapper import RoundRecords


class FewFedWeight(FedAvg, RoundRecords):
    """FedAvg sampling with per-client pseudo data and performance-weighted aggregation.

    ``global_model`` is the ServerApp's `GlobalModel`: the strategy borrows the one server copy
    of the model to generate pseudo data and never keeps a model of its own."""

    def __init__(self, settings: FewFedWeightConfig, global_model: Any, seed: int,
                 query_timeout: float, **fedavg_args: Any) -> None:
        super().__init__(**fedavg_args)
        self.settings, self.global_model, self.seed = settings, global_model, seed
        self.query_timeout = query_timeout
        self.descriptions: dict[int, dict[str, str]] = {}

    def summary(self) -> None:
        s = self.settings
        log(INFO, "\t├──> FewFedWeight: %d pseudo samples per task, sample weighting %s, "
                  "client weighting %s (τ=%g)", s.pseudo_count, s.sample_weighting,
            s.client_weighting, s.client_weight_temperature)
        super().summary()

    # --- 1. task metadata ---------------------------------------------------------------
    def query_tasks(self, grid: Grid, node_ids: Iterable[int]) -> None:
        """Ask nodes we do not know yet for their task's public description."""
        ask = [n for n in node_ids if n not in self.descriptions]
        for node, record in query_nodes(grid, ask, self.query_timeout).items():
            self.descriptions[node] = {k: v for k, v in record.items() if isinstance(v, str)}

    # --- 2. pseudo data -----------------------------------------------------------------
    def pseudo_config(self, description: dict[str, str], server_round: int, task_index: int
                      ) -> tuple[dict[str, Any], dict[str, float]]:
        s = self.settings
        samples = generate_pseudo_samples(
            self.global_model.model, self.global_model.tokenizer, description, s.pseudo_count,
            s.pseudo_max_new_tokens, s.pseudo_temperature, s.pseudo_top_p,
            seed=derive_seed(self.seed, "pseudo", server_round, task_index) % 2**31,
            energy_temperature=s.energy_temperature)
        kept = weight_samples(samples, s.sample_weighting, s.sample_weight_temperature,
                              s.sample_weight_floor, s.sample_top_k or None)
        energies = [x.energy for x in samples]
        stats = {"energy_mean": sum(energies) / len(energies), "kept": float(len(kept))}
        return pseudo_to_config(kept), stats

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        sampled = list(super().configure_train(server_round, arrays, config, grid))
        self.query_tasks(grid, [m.metadata.dst_node_id for m in sampled])
        self.global_model.load(arrays)
        started = time.perf_counter()
        by_task: dict[str, tuple[dict[str, Any], dict[str, float]]] = {}
        out = []
        for msg in sampled:
            node = msg.metadata.dst_node_id
            description = self.descriptions.get(node)
            # FedAvg shares one record: copy per client; ask for the validation score
            cfg = ConfigRecord({**dict(config), wire.CLIENT_SCORES: True,
                                LOSS_WEIGHT_KEY: self.settings.pseudo_loss_weight})
            if description and server_round >= self.settings.pseudo_start_round:
                key = json.dumps(description, sort_keys=True)
                if key not in by_task:
                    by_task[key] = self.pseudo_config(description, server_round, len(by_task))
                cfg.update(by_task[key][0])
            out.append(Message(RecordDict({self.arrayrecord_key: arrays,
                                           self.configrecord_key: cfg}),
                               message_type=MessageType.TRAIN, dst_node_id=node))
        self.record(server_round, pseudo_seconds=time.perf_counter() - started,
                    pseudo_tasks=len(by_task),
                    pseudo_energy_mean=_mean([s["energy_mean"] for _, s in by_task.values()]),
                    pseudo_kept_mean=_mean([s["kept"] for _, s in by_task.values()]))
        return out

    # --- 4. adaptive aggregation --------------------------------------------------------
    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = [m for m in replies if not m.has_error()]  # GuardedStrategy checked the rest
        if not valid:
            return None, None
        metrics = {m.metadata.src_node_id: m.content[wire.METRICS] for m in valid}
        weights = client_weights(
            {node: float(rec[wire.SCORE]) for node, rec in metrics.items()},
            self.settings.client_weighting, self.settings.client_weight_temperature,
            num_examples={node: int(rec[self.weighted_by_key]) for node, rec in metrics.items()})
        average = StreamingAverage(valid[0].content[self.arrayrecord_key])
        average.add_many([m.content[self.arrayrecord_key] for m in valid],
                         [weights[m.metadata.src_node_id] for m in valid])
        self.record(server_round, client_weights={
            str(int(metrics[n].get(wire.PARTITION_ID, n))): w for n, w in weights.items()})
        return average.result(), self.train_metrics_aggr_fn(
            [m.content for m in valid], self.weighted_by_key)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def build(ctx: Any) -> FewFedWeight:
    """The server side of ``fewfedweight`` (`fedprivacy.methods.fewfedweight`)."""
    cfg = ctx.cfg
    return FewFedWeight(cfg.strategy.fewfedweight, ctx.model, cfg.seed,
                        cfg.strategy.round_timeout, **ctx.fedavg_args)
