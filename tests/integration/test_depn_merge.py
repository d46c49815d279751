"""NeuronEditMerge: the union of the clients' DEPN neurons is zeroed in the aggregated model."""

import numpy as np
import pytest
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedprivacy import sites
from fedprivacy.adapters import wire_state
from fedprivacy.config import ModelConfig
from fedprivacy.models import build_model, load_tokenizer
from fedprivacy.privacy.depn import neuron_ids, neurons_by_layer
from fedprivacy.strategies.depn_merge import NEURONS_KEY, NeuronEditMerge
from tests.tiny import train_reply

pytestmark = pytest.mark.integration
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def test_neuron_ids_round_trip():
    # Execute
    ids = neuron_ids([(1, 3), (0, 7), (1, 0)], d_ff=10)
    # Assert
    assert ids == [7, 10, 13]
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
