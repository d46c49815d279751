"""The ServerApp's own side: it never builds client data, and the saved global model's edit
record describes exactly what its weights carry."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity
from transformers import AutoModelForCausalLM

from fedprivacy import sites
from fedprivacy.config import flatten, load_config, unflatten
from fedprivacy.data import federated
from fedprivacy.editing import recorded_edits
from fedprivacy.methods.depn import NEURONS_KEY
from fedprivacy.privacy.depn import neuron_ids, neurons_by_layer
from fedprivacy.strategies.depn_merge import NeuronEditMerge
from fedprivacy.strategies.factory import make_strategy
from fedprivacy.strategies.server_app import ServerRun
from tests.tiny import train_reply

pytestmark = pytest.mark.integration
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
SMALL = ["model.hidden_size=32", "model.num_layers=2", "simulation.num_clients=2"]


@pytest.fixture
def no_client_data(monkeypatch):
    """Every function that builds or reads a client's data raises."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the server built client data")

    for name in ("build_client_data", "_pool", "_task_client", "_pii_client", "task_splits",
                 "pii_corpus", "make_canaries", "partition_records"):
        monkeypatch.setattr(federated, name, forbidden)


@pytest.mark.parametrize("source", ["tasks", "pii"])
def test_server_evaluates_without_building_client_data(source, tmp_path, no_client_data):
    # Prepare
    cfg = load_config(None, SMALL + [f"data.source={source}", f"out_dir={tmp_path}"])
    # Execute
    run = ServerRun(cfg, grid=None)
    result = run.evaluate(run.global_model.initial_arrays)
    # Assert
    assert result["eval_loss"] > 0 and run.eval_set["input_ids"].shape[0] == cfg.server.eval_records


def test_depn_union_guard_tunes_on_the_servers_own_text_alone(tmp_path, no_client_data):
    # Prepare: the adversary's view of the guard: the server holds the aggregate, the ids the
    # clients declared and the run config; it must build no client data to guard the union
    cfg = load_config(None, SMALL + ["data.source=pii", "client.pipeline=[sft,depn]",
                                     "client.depn.union_budget=0.0", f"out_dir={tmp_path}"])
    run = ServerRun(cfg, grid=None)
    merge = make_strategy(cfg, run.global_model)
    arrays = run.global_model.initial_arrays
    # Execute
    merge.aggregate_train(1, [_reply(1, arrays, list(range(8))), _reply(2, arrays, [8, 9])])
    # Assert: the guard ran (it records its dev perplexity change) on PII-free text only
    record = merge.round_record(1)
    assert record["depn_proposed"] == 10 and record["depn_dev_ppl_change"] <= 1e-9
    dev = merge.guard.dev
    assert len(dev["input_ids"]) > 0 and not dev["private_mask"].any()


def test_server_runs_when_the_client_data_file_is_not_on_its_machine(tmp_path, no_client_data):
    # Prepare: a deployment's run_config names a client file that only the clients have
    flat = flatten(load_config(None, SMALL + [f"out_dir={tmp_path}"]))
    flat.update({"data.source": "files", "data.path": "/clients/only/records.jsonl"})
    cfg = unflatten(flat)
    # Execute
    run = ServerRun(cfg, grid=None)
    # Assert: the server evaluates on its own generated public text
    assert run.evaluate(run.global_model.initial_arrays)["eval_loss"] > 0
    assert all(r == [] for r in run.eval_set.get("private_spans", [[]]))


def _reply(node, arrays, neurons):
    return train_reply(node, arrays, {"num-examples": 1, NEURONS_KEY: neurons})


def test_saved_model_records_exactly_the_zeroed_columns_it_carries(tmp_path):
    # Prepare: a DEPN run's server; two rounds zero two different unions
    cfg = load_config(None, SMALL + ["client.pipeline=[sft,depn]", f"out_dir={tmp_path}"])
    run = ServerRun(cfg, grid=None)
    model = run.global_model.model
    d_ff = sites.ffn_dim(model)
    merge = NeuronEditMerge(FedAvg(), model)
    arrays = run.global_model.initial_arrays
    unions = {1: [(0, 3), (1, 7)], 2: [(0, 5)]}
    for rnd, neurons in unions.items():
        ids = neuron_ids(neurons, d_ff)
        trained = ArrayRecord({k: torch.from_numpy(a.numpy() + 0.01) for k, a in arrays.items()})
        arrays, _ = merge.aggregate_train(rnd, [_reply(1, trained, ids), _reply(2, trained, ids)])
        run.folder.append_round({"round": rnd, "strategy": merge.round_record(rnd)})
    # Execute
    run.finish(arrays)
    saved = AutoModelForCausalLM.from_pretrained(run.folder.model_dir)
    # Assert: one edit, the last round's union; its columns are zero, round 1's are not
    edits = recorded_edits(saved)
    assert [(e["layer"], e["indices"], e["factor"]) for e in edits] == [(0, [5], 0.0)]
    zeroed = {(e["layer"], i) for e in edits for i in e["indices"]}
    for layer in range(sites.num_layers(saved)):
        site = sites.ffn(saved, layer)
        for index in range(d_ff):
            column = site.weight.select(site.neuron_axis, index)
            assert bool(torch.all(column == 0)) == ((layer, index) in zeroed), (layer, index)
    assert neurons_by_layer(neuron_ids(unions[2], d_ff), d_ff) == {0: [5]}
    np.testing.assert_array_equal(
        saved.state_dict()["model.layers.1.mlp.down_proj.weight"][:, 7].numpy(),
        arrays["model.layers.1.mlp.down_proj.weight"].numpy()[:, 7])
