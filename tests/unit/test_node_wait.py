"""GuardedStrategy: a round waits for `min_clients` nodes only up to `node_wait`, then goes on
with the nodes it has; an aggregate needs `min_clients` valid replies."""

import time

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedprivacy import wire
from fedprivacy.config import load_config
from fedprivacy.strategies.factory import fedavg_arguments
from fedprivacy.strategies.guarded import GuardedStrategy

pytestmark = pytest.mark.unit

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
GLOBAL = ArrayRecord({"w": Array(np.zeros(3, np.float32))})


class OneNodeLeft:
    """A Grid where only the nodes in ``alive`` are connected; each answers the partition
    query with its partition id (node id − 10)."""

    def __init__(self, alive: list[int]) -> None:
        self.alive = alive

    def get_node_ids(self) -> list[int]:
        return list(self.alive)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"q{msg.metadata.dst_node_id}"
            task = ConfigRecord({wire.PARTITION_ID: msg.metadata.dst_node_id - 10})
            reply = Message(RecordDict({wire.TASK: task}), reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
            replies.append(reply)
        return replies


def _guard(min_clients: int, node_wait: float) -> GuardedStrategy:
    inner = FedAvg(**fedavg_arguments(load_config(None, [])))  # the project's FedAvg
    return GuardedStrategy(inner, min_clients=min_clients, node_wait=node_wait)


def test_a_missing_node_costs_the_bounded_wait_and_the_round_goes_on():
    # Prepare: min_clients 2, but one of the two nodes is dead
    guard, grid = _guard(min_clients=2, node_wait=0.5), OneNodeLeft([11])
    # Execute
    started = time.time()
    train = list(guard.configure_train(1, GLOBAL, ConfigRecord(), grid))
    evaluate = list(guard.configure_evaluate(1, GLOBAL, ConfigRecord(), grid))
    waited = time.time() - started
    # Assert: both stages went on with the live node after about node_wait each, and said so
    assert [m.metadata.dst_node_id for m in train] == [11]
    assert [m.metadata.dst_node_id for m in evaluate] == [11]
    assert 1.0 <= waited < 5.0
    assert guard.round_log(1).extra["nodes_short"] == {"train": 1, "evaluate": 1}


def test_enough_nodes_cost_no_wait():
    guard, grid = _guard(min_clients=1, node_wait=30.0), OneNodeLeft([11])
    started = time.time()
    assert len(list(guard.configure_train(1, GLOBAL, ConfigRecord(), grid))) == 1
    assert time.time() - started < 5.0 and "nodes_short" not in guard.round_log(1).extra


def test_no_node_at_all_skips_the_stage_instead_of_waiting_forever():
    guard = _guard(min_clients=1, node_wait=0.2)
    assert list(guard.configure_train(1, GLOBAL, ConfigRecord(), OneNodeLeft([]))) == []
    arrays, metrics = guard.aggregate_train(1, [])
    assert arrays is None and metrics is None


def _train_reply(node: int) -> Message:
    ins = Message(RecordDict({"arrays": GLOBAL, "config": ConfigRecord()}), dst_node_id=node,
                  message_type=MessageType.TRAIN)
    ins.metadata.__dict__["_message_id"] = f"m{node}"
    return Message(RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(3, np.float32))}),
                               "metrics": MetricRecord({"num-examples": 4, "train_loss": 1.0})}),
                   reply_to=ins)


@pytest.mark.parametrize(("min_clients", "aggregated"), [(1, True), (2, False)])
def test_an_aggregate_needs_min_clients_valid_replies(min_clients, aggregated):
    # Prepare: one valid train reply
    guard = _guard(min_clients=min_clients, node_wait=0.1)
    guard._spec = {"w": ((3,), "float32")}
    # Execute
    arrays, _ = guard.aggregate_train(1, [_train_reply(11)])
    # Assert
    assert (arrays is not None) == aggregated
    assert ("not_aggregated" in guard.round_log(1).extra) == (not aggregated)
