"""What a client works with for one message: config, its private data, the model, its state.

Private data is generated or loaded inside the client process from the client's partition id
and never leaves it: only weights and metrics go into the reply. Method steps
(`fedprivacy.methods`) see a `ClientJob`; what the server asks for arrives as record keys in
the message's config, never as the server's strategy name.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedprivacy import adapters, wire
from fedprivacy.config import ExperimentConfig, unflatten
from fedprivacy.data.encoding import encode_records
from fedprivacy.data.federated import (
    NODE_DATA_KEY,
    ClientData,
    build_client_data,
    node_file_client_data,
)
from fedprivacy.data.records import derive_seed
from fedprivacy.methods import local
from fedprivacy.methods.registry import Method
from fedprivacy.models import build_model, load_tokenizer, resolve_device

Encoded = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ClientResources:
    """Per-process cache of what does not change between rounds."""

    cfg: ExperimentConfig
    tokenizer: PreTrainedTokenizerBase
    data: ClientData
    train_set: Encoded
    val_set: Encoded
    skeleton: PreTrainedModel


@lru_cache(maxsize=4)
def _base(run_config_json: str) -> tuple[ExperimentConfig, PreTrainedTokenizerBase, PreTrainedModel]:
    cfg = unflatten(json.loads(run_config_json))
    tokenizer = load_tokenizer(cfg.model)
    return cfg, tokenizer, adapters.wrap(build_model(cfg.model, tokenizer, cfg.seed), cfg.model,
                                         cfg.seed)


@lru_cache(maxsize=512)
def client_resources(run_config_json: str, partition_id: int, num_partitions: int,
                     data_path: str = "") -> ClientResources:
    """This client's resources; ``data_path`` (a node's own file) replaces the run's data."""
    cfg, tokenizer, skeleton = _base(run_config_json)
    data = (node_file_client_data(cfg.data, data_path, cfg.seed) if data_path else
            build_client_data(cfg.data, partition_id, num_partitions, cfg.seed))
    encode = lambda records: encode_records(tokenizer, records, cfg.data.max_length)  # noqa: E731
    return ClientResources(cfg, tokenizer, data, encode(data.train), encode(data.validation),
                           skeleton)


def partition_of(context: Context) -> tuple[int, int]:
    """(partition id, number of partitions) from the node config (simulation or deployment)."""
    node = context.node_config
    try:
        return int(node["partition-id"]), int(node["num-partitions"])
    except KeyError as err:
        raise KeyError(f"node_config lacks {err}: start SuperNodes with "
                       "--node-config 'partition-id=<i> num-partitions=<n>'") from err


def resources_of(context: Context) -> tuple[ClientResources, int]:
    """This node's cached resources and its partition id; a node config's ``data-path``
    (``flower-supernode --node-config "... data-path=/srv/private/notes.jsonl"``) names the
    node's own data file."""
    pid, num = partition_of(context)
    path = str(context.node_config.get(NODE_DATA_KEY, ""))
    return client_resources(json.dumps(dict(context.run_config), sort_keys=True), pid, num,
                            path), pid


@dataclass
class ClientJob:
    """One train/evaluate message as the local pipeline sees it."""

    res: ClientResources
    partition_id: int
    server_round: int
    model: PreTrainedModel
    config: ConfigRecord
    state: RecordDict

    @property
    def cfg(self) -> ExperimentConfig:
        return self.res.cfg

    @property
    def seed(self) -> int:
        """A seed unique to (run seed, round, partition): data order, dropout, teachers.
        Known to the server: never use it for privacy noise (`secret_generator`)."""
        return derive_seed(self.cfg.seed, "client", self.server_round, self.partition_id) % 2**31

    @property
    def last_round(self) -> bool:
        """This message is of the run's last round (the rounds the server plans, sent in the
        message config; the run config's where a message carries none)."""
        return self.server_round >= int(self.config.get(wire.NUM_ROUNDS, self.cfg.rounds))

    def settings(self, method: Method) -> Any:
        """The settings section of ``method`` in this run's config."""
        return method.settings_of(self.cfg)

    @staticmethod
    def secret_generator() -> torch.Generator:
        """A generator seeded from the OS's entropy (``os.urandom``): privacy noise and the
        sampling the DP accountant relies on must be unpredictable to the server, which knows
        the run seed and every seed derived from it."""
        return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "big") >> 1)

    def state_get(self, key: str) -> dict[str, Any] | None:
        """A value a method kept in the node's persistent state (``Context.state``)."""
        record = self.state.get(key)
        return dict(record) if record is not None else None

    def state_put(self, key: str, values: dict[str, Any]) -> None:
        """Keep number lists in the node's persistent state for the next round."""
        self.state[key] = MetricRecord(values)

    @property
    def keeps_own_model(self) -> bool:
        """The server asked the client to train and keep its own model (local-only)."""
        return bool(self.config.get(local.KEEP_MODEL_KEY, False))

    def keep_own_model(self) -> None:
        """Store the trained model (its wire arrays) in the node's persistent state."""
        self.state[local.STATE_KEY] = ArrayRecord(adapters.wire_state(self.model))

    @classmethod
    def from_message(cls, msg: Message, context: Context) -> ClientJob:
        res, pid = resources_of(context)
        model = copy.deepcopy(res.skeleton)
        config = msg.content[wire.CONFIG] if wire.CONFIG in msg.content else ConfigRecord()
        arrays = msg.content[wire.ARRAYS]
        if config.get(local.KEEP_MODEL_KEY, False) and local.STATE_KEY in context.state:
            arrays = context.state[local.STATE_KEY]
        adapters.load_wire(model, arrays)
        model.to(resolve_device(res.cfg.train.device))
        return cls(res, pid, int(config.get(wire.SERVER_ROUND, 0)), model, config, context.state)
