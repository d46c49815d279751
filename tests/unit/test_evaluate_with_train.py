"""GuardedStrategy with `evaluate_with_train`: the clients' evaluations ride on the train
replies and are the evaluate stage's replies; no evaluate message is sent."""

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


def _instruction(node: int) -> Message:
    msg = Message(RecordDict({wire.CONFIG: ConfigRecord()}), dst_node_id=node,
                  message_type=MessageType.TRAIN)
    msg.metadata.__dict__["_message_id"] = f"m{node}"
    return msg


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
