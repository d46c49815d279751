"""NeuronEditMerge: the union of the clients' DEPN neurons is zeroed in the aggregated model."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedprivacy import sites
from fedprivacy.adapters import wire_state
from fedprivacy.config import ModelConfig, load_config
from fedprivacy.evaluation import evaluate_loss, server_dev_set
from fedprivacy.models import build_model, load_tokenizer
from fedprivacy.privacy.depn import neuron_ids, neurons_by_layer
from fedprivacy.strategies.depn_merge import NEURONS_KEY, NeuronEditMerge, wrap
from fedprivacy.strategies.factory import ServerContext
from fedprivacy.strategies.server_app import GlobalModel
from tests.tiny import train_reply

pytestmark = pytest.mark.integration
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def test_neuron_ids_round_trip():
    # Execute
    ids = neuron_ids([(1, 3), (0, 7), (1, 0)], d_ff=10)
    # Assert
    assert ids == [13, 7, 10]  # rank order kept
    assert neurons_by_layer(ids, 10) == {0: [7], 1: [0, 3]}


def _reply(node, arrays, neurons):
    return train_reply(node, arrays, {"num-examples": 1, NEURONS_KEY: neurons})


def test_union_of_reported_neurons_is_zeroed_after_averaging():
    # Prepare: two clients with the same weights; each reports one different neuron
    mc = ModelConfig(hidden_size=32, num_layers=2)
    model = build_model(mc, load_tokenizer(mc), seed=0)
    arrays = ArrayRecord(wire_state(model))
    d_ff = sites.ffn_dim(model)
    merge = NeuronEditMerge(FedAvg(), model)
    # Execute
    merged, _ = merge.aggregate_train(1, [_reply(1, arrays, [0 * d_ff + 5]),
                                          _reply(2, arrays, [1 * d_ff + 9])])
    # Assert: exactly those two columns of the down projections are zero, the rest unchanged
    out = merged.to_torch_state_dict()
    down = {layer: f"model.layers.{layer}.mlp.down_proj.weight" for layer in (0, 1)}
    assert not out[down[0]][:, 5].any() and not out[down[1]][:, 9].any()
    original = arrays.to_torch_state_dict()
    for layer, column in ((0, 5), (1, 9)):
        keep = [c for c in range(d_ff) if c != column]
        np.testing.assert_allclose(out[down[layer]][:, keep], original[down[layer]][:, keep],
                                   rtol=1e-6)
    assert merge.round_record(1)["depn_union"] == 2


def test_union_guard_zeroes_only_what_the_servers_dev_budget_allows(tmp_path):
    # Prepare: a DEPN server with a zero budget on its dev text; two clients rank 20 neurons each
    cfg = load_config(None, ["model.hidden_size=32", "model.num_layers=2", "data.source=pii",
                             "simulation.num_clients=2", "client.pipeline=[sft,depn]",
                             "client.depn.union_budget=0.0", f"out_dir={tmp_path}"])
    server = GlobalModel(cfg)
    before = {k: v.clone() for k, v in server.model.state_dict().items()}
    merge = wrap(FedAvg(), ServerContext(cfg, server, {}))
    arrays = ArrayRecord(wire_state(server.model))
    rankings = [list(range(0, 40, 2)), list(range(1, 41, 2))]
    # Execute
    merged, _ = merge.aggregate_train(1, [_reply(1, arrays, rankings[0]), _reply(2, arrays, rankings[1])])
    # Assert: the server's own model is untouched (the guard works on a copy); some neurons kept,
    # some dropped; the zeroed aggregate's dev loss is within the budget (here: not above the
    # unedited aggregate's); exactly the recorded union is zero
    assert all(torch.equal(v, server.model.state_dict()[k]) for k, v in before.items())
    record = merge.round_record(1)
    assert record["depn_proposed"] == 40 and 0 < record["depn_union"] < 40
    assert record["depn_dev_ppl_change"] <= 1e-9
    dev = server_dev_set(cfg, server.tokenizer, "client.depn.union_budget")
    server.model.load_state_dict(arrays.to_torch_state_dict())
    unedited = evaluate_loss(server.model, dev, 16)[0]
    server.model.load_state_dict(merged.to_torch_state_dict())
    assert evaluate_loss(server.model, dev, 16)[0] <= unedited
    down = merged.to_torch_state_dict()["model.layers.0.mlp.down_proj.weight"]
    zeroed = {i for i in range(40) if not down[:, i].any()}
    assert zeroed == set(record["depn_neurons"]) and len(zeroed) == record["depn_union"]
