"""GuardedStrategy's round stages on a real deployment's terms: a round waits for
`min_clients` nodes only up to `node_wait`, then goes on with the nodes it has; an aggregate
needs `min_clients` valid replies; a vanished node is recorded by partition; with
`evaluate_with_train` the evaluations ride on the train replies."""

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
from tests.tiny import FakeGrid

pytestmark = pytest.mark.unit

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
GLOBAL = ArrayRecord({"w": Array(np.zeros(3, np.float32))})


def _guard(min_clients: int, node_wait: float) -> GuardedStrategy:
    inner = FedAvg(**fedavg_arguments(load_config(None, [])))  # the project's FedAvg
    return GuardedStrategy(inner, min_clients=min_clients, node_wait=node_wait)


def test_a_missing_node_costs_the_bounded_wait_and_the_round_goes_on():
    # Prepare: min_clients 2, but one of the two nodes is dead
    guard, grid = _guard(min_clients=2, node_wait=0.5), FakeGrid([11])
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
    guard, grid = _guard(min_clients=1, node_wait=30.0), FakeGrid([11])
    started = time.time()
    assert len(list(guard.configure_train(1, GLOBAL, ConfigRecord(), grid))) == 1
    assert time.time() - started < 5.0 and "nodes_short" not in guard.round_log(1).extra


def test_no_node_at_all_skips_the_stage_instead_of_waiting_forever():
    guard = _guard(min_clients=1, node_wait=0.2)
    assert list(guard.configure_train(1, GLOBAL, ConfigRecord(), FakeGrid([]))) == []
    arrays, metrics = guard.aggregate_train(1, [])
    assert arrays is None and metrics is None


def _instruction(node: int) -> Message:
    msg = Message(RecordDict({wire.CONFIG: ConfigRecord()}), dst_node_id=node,
                  message_type=MessageType.TRAIN)
    msg.metadata.__dict__["_message_id"] = f"m{node}"
    return msg


def _train_reply(node: int) -> Message:
    return Message(RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(3, np.float32))}),
                               "metrics": MetricRecord({"num-examples": 4, "train_loss": 1.0})}),
                   reply_to=_instruction(node))


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


def test_a_node_that_disappears_is_recorded_by_its_partition_every_round_it_misses():
    # Prepare: two nodes in round 1; then node 12 (partition 2) is gone
    guard, grid = _guard(min_clients=1, node_wait=0.1), FakeGrid([11, 12])
    list(guard.configure_train(1, GLOBAL, ConfigRecord(), grid))
    grid.alive = [11]
    # Execute
    for rnd in (2, 3):
        list(guard.configure_train(rnd, GLOBAL, ConfigRecord(), grid))
    # Assert
    assert guard.round_log(1).dropped == []
    for rnd in (2, 3):
        assert [d["client"] for d in guard.round_log(rnd).dropped] == ["partition 2"]


def _reply(ins: Message, value: float, n: int, eval_loss: float) -> Message:
    content = RecordDict({
        wire.ARRAYS: ArrayRecord({"w": Array(np.full(3, value, np.float32))}),
        wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: n, "train_loss": value}),
        wire.EVALUATION: MetricRecord({wire.NUM_EXAMPLES: n, "eval_loss": eval_loss})})
    return Message(content, reply_to=ins)


def test_evaluations_on_train_replies_are_the_evaluate_stage():
    # Prepare: two clients; their train replies carry their evaluation of the received model
    guard = GuardedStrategy(FedAvg(**fedavg_arguments(load_config(None, []))),
                            evaluate_with_train=True)
    sent = list(guard.configure_train(1, ArrayRecord({"w": Array(np.zeros(3, np.float32))}),
                                      ConfigRecord(), FakeGrid([11, 12])))
    assert [m.content[wire.CONFIG][wire.EVALUATE_FIRST] for m in sent] == [True, True]
    guard._sent = [_instruction(1), _instruction(2)]  # with the ids a Grid gives them
    replies = [_reply(guard._sent[0], 1.0, 1, 2.0), _reply(guard._sent[1], 3.0, 3, 4.0)]
    # Execute
    arrays, _ = guard.aggregate_train(1, replies)
    sent = list(guard.configure_evaluate(1, ArrayRecord(), ConfigRecord(), grid=None))
    metrics = guard.aggregate_evaluate(1, [])
    # Assert: weights averaged as usual, nothing sent to evaluate, evaluations weighted 1:3
    np.testing.assert_allclose(arrays["w"].numpy(), np.full(3, 2.5))
    assert sent == []
    assert metrics["eval_loss"] == pytest.approx(3.5)
    assert guard.round_log(1).dropped == []
    assert set(guard.round_log(1).clients["node-1"]) >= {"train.train_loss", "evaluate.eval_loss"}
