"""LoRA adapters (`fedprivacy.adapters`) through the ClientApp and the server: only the adapter
crosses the wire, every client step trains it, the privacy ledger is reported as without, and
the saved model is the merged one."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity
from opacus.accountants import RDPAccountant
from transformers import AutoModelForCausalLM

from fedprivacy import adapters, sites, wire
from fedprivacy.clients import client_app
from fedprivacy.clients.job import ClientJob
from fedprivacy.config import flatten, load_config
from fedprivacy.editing import recorded_edits
from fedprivacy.methods.depn import NEURONS_KEY
from fedprivacy.methods.dp_sgd import sample_rate
from fedprivacy.models import build_model, load_tokenizer
from fedprivacy.privacy.depn import neuron_ids
from fedprivacy.privacy.dp import epsilon, make_private, restore_accountant
from fedprivacy.strategies.depn_merge import NeuronEditMerge
from fedprivacy.strategies.server_app import GlobalModel, ServerRun
from fedprivacy.training import make_optimizer
from tests.tiny import PII, SMALL, train_reply

pytestmark = pytest.mark.integration
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

LORA = ["model.adapter=lora", "model.lora_r=4"]


def _setup(overrides):
    cfg = load_config(None, overrides)
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2},
                      state=RecordDict(), run_config=flatten(cfg))
    return cfg, context, GlobalModel(cfg).initial_arrays


def _message(arrays, kind=MessageType.TRAIN, server_round=1):
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": server_round})})
    return Message(content, dst_node_id=1, message_type=kind)


def test_only_the_adapter_is_on_the_wire_and_counted():
    # Prepare
    cfg, context, arrays = _setup(SMALL + LORA)
    full = build_model(cfg.model, load_tokenizer(cfg.model), cfg.seed)
    # Execute
    reply = client_app.train(_message(arrays), context)
    evaluated = client_app.evaluate(_message(arrays, MessageType.EVALUATE), context)
    # Assert: A and B of q, k, v, o in both layers, and nothing else
    sent = reply.content["arrays"]
    assert set(sent.keys()) == set(arrays.keys())
    assert len(sent) == 2 * 4 * 2 and all("lora_" in k for k in sent.keys())
    metrics = reply.content["metrics"]
    assert metrics["bytes_up"] == metrics["bytes_down"] == adapters.num_bytes(arrays)
    assert evaluated.content["metrics"]["bytes_down"] == adapters.num_bytes(arrays)
    full_bytes = adapters.num_bytes(ArrayRecord(full.state_dict()))
    assert metrics["bytes_up"] < 0.1 * full_bytes
    changed = [k for k in arrays.keys()
               if not np.array_equal(arrays[k].numpy(), sent[k].numpy())]
    assert any("lora_B" in k for k in changed)  # B starts at zero: SFT moved it


def test_full_weight_replies_count_their_bytes_too():
    # Prepare
    _, context, arrays = _setup(SMALL)
    # Execute
    metrics = client_app.train(_message(arrays), context).content["metrics"]
    # Assert
    assert metrics["bytes_up"] == metrics["bytes_down"] == adapters.num_bytes(arrays)
    assert not any("lora_" in k for k in arrays.keys())


@pytest.mark.parametrize("step", ["swing", "kd", "dp_sgd"])
def test_each_client_step_trains_the_adapter(step):
    # Prepare
    _, context, arrays = _setup(PII + LORA + [f"client.pipeline=[{step}]"])
    # Execute
    reply = client_app.train(_message(arrays), context)
    # Assert
    sent = reply.content["arrays"]
    assert set(sent.keys()) == set(arrays.keys())
    assert np.isfinite(reply.content["metrics"]["train_loss"])
    assert any(not np.array_equal(arrays[k].numpy(), sent[k].numpy()) for k in arrays.keys())


def test_dp_epsilon_with_an_adapter_is_the_accountants_for_the_history():
    # Prepare: the same run with and without the adapter
    cfg, lora_ctx, lora_arrays = _setup(PII + LORA + ["client.pipeline=[dp_sgd]"])
    _, full_ctx, full_arrays = _setup(PII + ["client.pipeline=[dp_sgd]"])
    # Execute: two rounds each
    for rnd in (1, 2):
        lora = client_app.train(_message(lora_arrays, server_round=rnd), lora_ctx)
        full = client_app.train(_message(full_arrays, server_round=rnd), full_ctx)
    # Assert: ε is Opacus' RDP accountant's for 2 rounds of steps at (σ, q), and the same as
    # without the adapter (the ledger does not depend on what is trained)
    got = lora.content["metrics"]["dp_sgd.epsilon"]
    q = sample_rate(int(lora.content["metrics"]["num-examples"]), cfg.train.batch_size)
    direct = RDPAccountant()
    direct.history = [(cfg.client.dp.noise_multiplier, q, 2 * cfg.train.steps)]
    assert got == pytest.approx(direct.get_epsilon(delta=cfg.client.dp.delta), rel=1e-12)
    history = restore_accountant(dict(lora_ctx.state["dp-accountant"]))
    assert got == pytest.approx(epsilon(history, cfg.client.dp.delta), rel=1e-12)
    assert got == pytest.approx(full.content["metrics"]["dp_sgd.epsilon"], rel=1e-12)


def test_opacus_sees_only_the_lora_parameters():
    # Prepare
    cfg = load_config(None, SMALL + LORA + ["client.pipeline=[dp_sgd]"])
    tokenizer = load_tokenizer(cfg.model)
    model = adapters.wrap(build_model(cfg.model, tokenizer, cfg.seed), cfg.model, cfg.seed)
    ids = torch.randint(4, len(tokenizer), (3, 12))
    trainer = make_private(model, make_optimizer(model, cfg.train), 0.5, cfg.client.dp,
                           batch_size=3, noise_generator=torch.Generator().manual_seed(0))
    # Execute
    trainer.step([ids, torch.ones_like(ids), ids])
    # Assert: a per-sample gradient of batch 3 on every LoRA parameter and on nothing else
    sampled = {n for n, p in model.named_parameters()
               if getattr(p, "grad_sample", None) is not None}
    lora = {n for n, p in model.named_parameters() if "lora_" in n}
    assert sampled == lora and {p.grad_sample.shape[0] for n, p in model.named_parameters()
                                if n in lora} == {3}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == lora
    trainer.close()


def test_evaluate_reports_the_privacy_ledger_with_an_adapter():
    # Prepare
    _, context, arrays = _setup(PII + LORA)
    # Execute
    metrics = client_app.evaluate(_message(arrays, MessageType.EVALUATE), context).content["metrics"]
    # Assert
    assert len(metrics["privacy.exposure"]) == 2
    assert metrics["privacy.exposure_exact"] == 1.0 and metrics["eval_loss"] > 0


def test_server_saves_the_merged_model(tmp_path):
    # Prepare: a trained adapter (B moved off zero) on the server's base
    cfg = load_config(None, SMALL + LORA + [f"out_dir={tmp_path}"])
    run = ServerRun(cfg, grid=None)
    arrays = ArrayRecord({k: torch.from_numpy(a.numpy() + 0.05)
                          for k, a in run.global_model.initial_arrays.items()})
    ids = torch.randint(4, len(run.global_model.tokenizer), (2, 10))
    with torch.no_grad():
        expected = run.global_model.load(arrays)(input_ids=ids).logits
    base = build_model(cfg.model, run.global_model.tokenizer, cfg.seed)
    # Execute
    run.finish(arrays)
    saved = AutoModelForCausalLM.from_pretrained(run.folder.model_dir)
    # Assert: a plain model that computes what base + adapter computed, not the base alone
    assert not any("lora" in k for k in saved.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(saved(input_ids=ids).logits, expected, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(base(input_ids=ids).logits, expected, atol=1e-3)


def test_targets_that_match_no_module_name_the_key():
    # Prepare
    cfg = load_config(None, SMALL + ["model.adapter=lora", "model.lora_targets=[no_such]"])
    model = build_model(cfg.model, load_tokenizer(cfg.model), cfg.seed)
    # Execute / Assert
    with pytest.raises(ValueError, match=r"^model\.lora_targets: "):
        adapters.wrap(model, cfg.model, cfg.seed)


def test_depn_with_an_adapter_reports_neurons_and_sends_only_the_adapter():
    # Prepare
    depn = ["client.pipeline=[sft,depn]", "client.depn.top_z=5", "client.depn.ig_steps=4",
            "client.depn.max_records=2"]
    _, context, arrays = _setup(PII + LORA + depn)
    # Execute
    reply = client_app.train(_message(arrays), context)
    # Assert
    metrics = reply.content["metrics"]
    assert set(reply.content["arrays"].keys()) == set(arrays.keys())
    assert 0 < metrics["depn.edited"] <= 5
    assert len(metrics["depn.neurons"]) == metrics["depn.edited"]


def test_a_client_zeroes_the_base_edits_it_receives():
    # Prepare: the server's arrays carry neuron 3 of layer 0 and neuron 7 of layer 1
    cfg, context, arrays = _setup(SMALL + LORA + ["client.pipeline=[sft,depn]"])
    d_ff = cfg.model.intermediate_size or 4 * cfg.model.hidden_size
    arrays[wire.BASE_EDITS] = Array(np.asarray([3, d_ff + 7], dtype=np.int64))
    # Execute
    job = ClientJob.from_message(_message(arrays), context)
    # Assert: exactly those columns of the base's down projections are zero
    base = adapters.base_of(job.model)
    for layer, zeroed in ((0, {3}), (1, {7})):
        site = sites.ffn(base, layer)
        zero = {i for i in range(d_ff) if bool(torch.all(site.weight.select(1, i) == 0))}
        assert zero == zeroed


def _reply(node, arrays, neurons):
    return train_reply(node, arrays, {"num-examples": 1, NEURONS_KEY: neurons})


def test_server_carries_the_union_of_base_edits_and_saves_them_merged(tmp_path):
    # Prepare: a DEPN run's server with an adapter; two rounds report different neurons
    cfg = load_config(None, SMALL + LORA + ["client.pipeline=[sft,depn]", f"out_dir={tmp_path}"])
    run = ServerRun(cfg, grid=None)
    d_ff = sites.ffn_dim(adapters.base_of(run.global_model.model))
    merge = NeuronEditMerge(FedAvg(), run.global_model.model)
    arrays = run.global_model.initial_arrays
    unions = {1: [(0, 3), (1, 7)], 2: [(0, 5)]}
    for rnd, neurons in unions.items():
        merge.configure_train(rnd, arrays, ConfigRecord(), _TwoNodes())
        trained = ArrayRecord({k: torch.from_numpy(a.numpy() + 0.01) for k, a in arrays.items()
                               if k != wire.BASE_EDITS})
        ids = neuron_ids(neurons, d_ff)
        arrays, _ = merge.aggregate_train(rnd, [_reply(1, trained, ids), _reply(2, trained, ids)])
        run.folder.append_round({"round": rnd, "strategy": merge.round_record(rnd)})
    # Execute
    run.finish(arrays)
    saved = AutoModelForCausalLM.from_pretrained(run.folder.model_dir)
    # Assert: the arrays carry every round's neurons (a frozen column cannot come back); the
    # merged model zeroes exactly them and records them
    union = sorted(neuron_ids(unions[1] + unions[2], d_ff))
    assert arrays[wire.BASE_EDITS].numpy().tolist() == union
    assert all("lora_" in k for k in arrays.keys() if k != wire.BASE_EDITS)
    edits = recorded_edits(saved)
    assert sorted((e["layer"], i) for e in edits for i in e["indices"]) == sorted(
        unions[1] + unions[2])
    for layer in range(sites.num_layers(saved)):
        site = sites.ffn(saved, layer)
        zero = {(layer, i) for i in range(d_ff)
                if bool(torch.all(site.weight.select(site.neuron_axis, i) == 0))}
        assert zero == {n for n in unions[1] + unions[2] if n[0] == layer}


class _TwoNodes:
    """A grid of two connected nodes (FedAvg samples them; nothing is sent)."""

    def get_node_ids(self):
        return [1, 2]


def test_lora_on_the_down_projection_is_refused_for_depn():
    # Prepare
    cfg = load_config(None, SMALL + ["model.adapter=lora", "model.lora_targets=[down_proj]",
                                     "client.pipeline=[sft,depn]"])
    model = adapters.wrap(build_model(cfg.model, load_tokenizer(cfg.model), cfg.seed),
                          cfg.model, cfg.seed)
    # Execute / Assert
    with pytest.raises(ValueError, match=r"^model\.lora_targets: DEPN"):
        NeuronEditMerge(FedAvg(), model)
