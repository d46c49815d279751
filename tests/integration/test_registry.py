"""A method is one module: a toy method registered here, in a test module, runs through the
config schema and the client pipeline without an edit anywhere else."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedprivacy.clients import client_app
from fedprivacy.config import ConfigError, flatten, load_config, unflatten
from fedprivacy.methods import registry
from fedprivacy.methods.registry import Method, check
from fedprivacy.models import build_model, load_tokenizer

pytestmark = pytest.mark.integration
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


@dataclass
class ShrinkConfig:
    """Settings of the toy method (``client.shrink``)."""

    factor: float = 0.5

    def validate(self) -> None:
        check(0 < self.factor <= 1, "factor", "must be in (0, 1]", self.factor)


def shrink_step(job):
    """The toy post-training step: scale every weight by ``factor``."""
    factor = job.settings(registry.get("shrink")).factor
    with torch.no_grad():
        for p in job.model.parameters():
            p.mul_(factor)
    return {"factor": factor}


@pytest.fixture
def shrink():
    method = registry.register(Method(name="shrink", kind="post", help="scale the weights",
                                      settings=ShrinkConfig, client_step=shrink_step,
                                      wire_keys=("shrink.factor",)))
    yield method
    registry.unregister("shrink")


def test_a_registered_method_runs_in_the_client_pipeline(shrink):
    # Prepare: the schema grows client.shrink; the pipeline names the method
    overrides = ["model.hidden_size=32", "model.num_layers=2", "train.steps=1",
                 "simulation.num_clients=2", "data.train_per_client=8", "data.val_per_client=4",
                 "client.pipeline=[sft,shrink]", "client.shrink.factor=0.25"]
    cfg = load_config(None, overrides)
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2},
                      state=RecordDict(), run_config=flatten(cfg))
    model = build_model(cfg.model, load_tokenizer(cfg.model), cfg.seed)
    arrays = ArrayRecord(model.state_dict())
    plain = load_config(None, overrides[:-2])
    plain_context = Context(run_id=1, node_id=1,
                            node_config={"partition-id": 0, "num-partitions": 2},
                            state=RecordDict(), run_config=flatten(plain))
    msg = lambda: Message(RecordDict({"arrays": arrays, "config": ConfigRecord(  # noqa: E731
        {"server-round": 1})}), dst_node_id=1, message_type=MessageType.TRAIN)
    # Execute
    reply = client_app.train(msg(), context)
    baseline = client_app.train(msg(), plain_context)
    # Assert: the step ran after sft, with its setting, and reported its metric
    metrics = reply.content["metrics"]
    assert metrics["shrink.factor"] == 0.25 and "shrink.seconds" in metrics
    assert unflatten(flatten(cfg)).client.shrink.factor == 0.25
    for key in arrays.keys():
        np.testing.assert_allclose(reply.content["arrays"][key].numpy(),
                                   0.25 * baseline.content["arrays"][key].numpy(), rtol=1e-5,
                                   atol=1e-7)


def test_a_registered_methods_settings_are_validated(shrink):
    # Execute / Assert
    with pytest.raises(ConfigError, match=r"^client\.shrink\.factor: must be in \(0, 1\]"):
        load_config(None, ["client.shrink.factor=2"])


def test_without_the_method_its_section_and_name_are_unknown():
    # Execute / Assert
    with pytest.raises(ConfigError, match="client.shrink"):
        load_config(None, ["client.shrink.factor=0.5"])
    with pytest.raises(ConfigError, match="client.pipeline"):
        load_config(None, ["client.pipeline=[sft,shrink]"])


def test_registry_refuses_a_second_owner_of_a_wire_key_or_section(shrink):
    # Execute / Assert
    with pytest.raises(ValueError, match="wire key 'shrink.factor'"):
        registry.register(Method(name="other", kind="post", help="", client_step=shrink_step,
                                 wire_keys=("shrink.factor",)))
    with pytest.raises(ValueError, match="config section client.shrink"):
        registry.register(Method(name="other", kind="post", help="", client_step=shrink_step,
                                 settings=ShrinkConfig, section="shrink"))
    with pytest.raises(ValueError, match="needs a client_step"):
        registry.register(Method(name="other", kind="train", help=""))


def test_methods_command_lists_every_registered_method(shrink, capsys):
    # Prepare
    from fedprivacy.simulations import cli

    # Execute
    code = cli.main(["methods"])
    # Assert: the built-in methods and the toy one, with their settings sections
    out = capsys.readouterr().out
    assert code == 0
    for name in ("sft", "dp_sgd", "swing", "kd", "depn", "fedavg", "fewfedweight", "local",
                 "shrink", "client.dp", "client.shrink", "strategy.fewfedweight"):
        assert name in out, name
