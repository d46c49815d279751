"""What a client works with for one message: config, its private data, the model, its state.

Private data is generated or loaded inside the client process from the client's partition id
and never leaves it: only weights and metrics go into the reply.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import lru_cache

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedprivacy.config import ExperimentConfig, unflatten
from fedprivacy.data.encoding import encode_records
from fedprivacy.data.federated import ClientData, build_client_data
from fedprivacy.models import build_model, cpu_state_dict, load_tokenizer, resolve_device

Encoded = dict[str, torch.Tensor]
LOCAL_MODEL_KEY = "local-model"


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
    return cfg, tokenizer, build_model(cfg.model, tokenizer, cfg.seed)


@lru_cache(maxsize=512)
def client_resources(run_config_json: str, partition_id: int, num_partitions: int
                     ) -> ClientResources:
    cfg, tokenizer, skeleton = _base(run_config_json)
    data = build_client_data(cfg.data, partition_id, num_partitions, cfg.seed)
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
    """This node's cached resources and its partition id."""
    pid, num = partition_of(context)
    return client_resources(json.dumps(dict(context.run_config), sort_keys=True), pid, num), pid


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
        """A seed unique to (run seed, round, partition)."""
        return (self.cfg.seed * 1_000_003 + self.server_round * 10_007 + self.partition_id) % 2**31

    @property
    def local_only(self) -> bool:
        """The local-only baseline: the client keeps training its own model across rounds."""
        return self.cfg.strategy.name == "local"

    def keep_local_model(self) -> None:
        """Store the trained model in the node's persistent state (local-only baseline)."""
        self.state[LOCAL_MODEL_KEY] = ArrayRecord(cpu_state_dict(self.model))

    @classmethod
    def from_message(cls, msg: Message, context: Context) -> ClientJob:
        res, pid = resources_of(context)
        model = copy.deepcopy(res.skeleton)
        arrays = msg.content["arrays"]
        if res.cfg.strategy.name == "local" and LOCAL_MODEL_KEY in context.state:
            arrays = context.state[LOCAL_MODEL_KEY]
        model.load_state_dict(arrays.to_torch_state_dict())
        model.to(resolve_device(res.cfg.train.device))
        config = msg.content["config"] if "config" in msg.content else ConfigRecord()
        return cls(res, pid, int(config.get("server-round", 0)), model, config, context.state)
