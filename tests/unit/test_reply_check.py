"""GuardedStrategy: malformed or failed replies are dropped with a reason; the round goes on."""

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedprivacy.strategies.guarded import GuardedStrategy, aggregate_client_metrics

pytestmark = pytest.mark.unit

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
GLOBAL = ArrayRecord({"w": Array(np.zeros((2, 3), np.float32)), "b": Array(np.zeros(3, np.float32))})


def _instruction(node):
    msg = Message(RecordDict({"arrays": GLOBAL, "config": ConfigRecord()}), dst_node_id=node,
                  message_type=MessageType.TRAIN)
    msg.metadata.__dict__["_message_id"] = f"m{node}"
    return msg


def _reply(node, arrays=None, metrics=None, value=1.0):
    arrays = arrays if arrays is not None else ArrayRecord(
        {"w": Array(np.full((2, 3), value, np.float32)), "b": Array(np.full(3, value, np.float32))})
    metrics = metrics if metrics is not None else MetricRecord(
        {"num-examples": 10, "train_loss": value, "partition-id": node})
    content = RecordDict({"arrays": arrays, "metrics": metrics})
    return Message(content, reply_to=_instruction(node))


def _guard_with_sent(nodes):
    guard = GuardedStrategy(FedAvg(train_metrics_aggr_fn=aggregate_client_metrics))
    guard._spec = {"w": ((2, 3), "float32"), "b": ((3,), "float32")}
    guard._sent = [_instruction(n) for n in nodes]
    return guard


@pytest.mark.parametrize("bad, reason", [
    (lambda: _reply(3, arrays=ArrayRecord({"w": Array(np.zeros((3, 2), np.float32)),
                                             "b": Array(np.zeros(3, np.float32))})), "expected float32[2, 3]"),
    (lambda: _reply(3, arrays=ArrayRecord({"w": Array(np.full((2, 3), np.nan, np.float32)),
                                             "b": Array(np.zeros(3, np.float32))})), "non-finite"),
    (lambda: _reply(3, arrays=ArrayRecord({"w": Array(np.zeros((2, 3), np.float64)),
                                             "b": Array(np.zeros(3, np.float32))})), "float64"),
    (lambda: _reply(3, arrays=ArrayRecord({"w": Array(np.zeros((2, 3), np.float32))})), "missing ['b']"),
    (lambda: _reply(3, metrics=MetricRecord({"train_loss": 1.0})), "weight key"),
    (lambda: _reply(3, metrics=MetricRecord({"num-examples": 10, "train_loss": float("inf"),
                                             "partition-id": 3})), "not finite"),
    (lambda: Message(Error(code=2, reason="boom in client"), reply_to=_instruction(3)), "boom in client"),
])
def test_bad_reply_is_dropped_and_round_goes_on(bad, reason):
    # Prepare
    guard = _guard_with_sent([1, 2, 3])
    replies = [_reply(1, value=1.0), _reply(2, value=3.0), bad()]
    # Execute
    arrays, metrics = guard.aggregate_train(1, replies)
    # Assert: the two good replies are averaged, the bad one is logged with its reason
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((2, 3), 2.0))
    assert metrics["train_loss"] == pytest.approx(2.0)
    dropped = guard.rounds[1].dropped
    assert len(dropped) == 1 and reason in dropped[0]["reason"] and dropped[0]["node"] == 3
    assert set(guard.rounds[1].clients) == {"1", "2"}


def test_missing_reply_is_recorded_as_timeout():
    # Prepare
    guard = _guard_with_sent([1, 2, 3])
    # Execute
    guard.aggregate_train(1, [_reply(1), _reply(2)])
    # Assert
    assert guard.rounds[1].dropped == [{"stage": "train", "node": 3, "client": "node 3",
                                        "reason": "no reply within the round timeout"}]


def test_inconsistent_metric_keys_drop_the_odd_reply():
    # Prepare
    guard = _guard_with_sent([1, 2, 3])
    odd = _reply(3, metrics=MetricRecord({"num-examples": 10, "other": 1.0, "partition-id": 3}))
    # Execute
    arrays, _ = guard.aggregate_train(1, [_reply(1), _reply(2), odd])
    # Assert
    assert arrays is not None and "metric keys differ" in guard.rounds[1].dropped[0]["reason"]


def test_all_replies_bad_keeps_global_model():
    # Prepare
    guard = _guard_with_sent([1])
    # Execute
    arrays, metrics = guard.aggregate_train(1, [_reply(1, metrics=MetricRecord({"x": 1.0}))])
    # Assert
    assert arrays is None and metrics is None


def test_client_metrics_are_weighted_and_skip_ids():
    # Prepare
    a = _reply(1, metrics=MetricRecord({"num-examples": 1, "loss": 1.0, "partition-id": 0}))
    b = _reply(2, metrics=MetricRecord({"num-examples": 3, "loss": 3.0, "partition-id": 1}))
    # Execute
    out = aggregate_client_metrics([a.content, b.content], "num-examples")
    # Assert
    assert dict(out) == {"loss": pytest.approx(2.5)}


def test_error_summary_keeps_the_exception_message():
    # Prepare: what Ray hands back for a ClientApp that raised
    reason = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::run() "
              "File \"/x/ray_actor.py\", line 65, in run\n    raise ClientAppException(str(ex))\n"
              "flwr.clientapp.client_app.ClientAppException: \nException ClientAppException "
              "occurred. Message: injected failure on partition 2'>")
    # Execute
    from fedprivacy.strategies.reply_check import error_summary
    # Assert
    assert error_summary(reason) == "injected failure on partition 2"
