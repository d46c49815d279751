"""The ClientApp's functions on real messages (no Flower runtime): steps compose, metrics are
reported, DP accounting persists in the Context, and nothing private leaves the client."""

import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedprivacy.clients import client_app
from fedprivacy.clients.job import client_resources
from fedprivacy.config import flatten, load_config
from fedprivacy.methods.local import KEEP_MODEL_KEY
from fedprivacy.models import build_model, load_tokenizer
from tests.tiny import PII as TINY_PII
from tests.tiny import SMALL

pytestmark = pytest.mark.integration
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

PII = TINY_PII + ["client.depn.top_z=5", "client.depn.ig_steps=4", "client.depn.max_records=2"]


def _setup(overrides, partition=0):
    cfg = load_config(None, overrides)
    context = Context(run_id=1, node_id=partition + 1,
                      node_config={"partition-id": partition, "num-partitions": 2},
                      state=RecordDict(), run_config=flatten(cfg))
    model = build_model(cfg.model, load_tokenizer(cfg.model), cfg.seed)
    return cfg, context, ArrayRecord(model.state_dict())


def _message(arrays, kind=MessageType.TRAIN, server_round=1, **config):
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": server_round,
                                                                   **config})})
    return Message(content, dst_node_id=1, message_type=kind)


def _reply_strings(reply):
    """Every string a reply carries (config records are the only place strings can travel)."""
    out = []
    for record in reply.content.config_records.values():
        out += [v for v in record.values() if isinstance(v, str)]
        out += [x for v in record.values() if isinstance(v, list) for x in v if isinstance(x, str)]
    return out


@pytest.mark.parametrize("steps", [["sft"], ["dp_sgd"], ["swing"], ["kd"], ["sft", "depn"]])
def test_each_pipeline_trains_and_reports(steps):
    # Prepare
    cfg, context, arrays = _setup(PII + [f"client.pipeline=[{','.join(steps)}]"])
    # Execute
    reply = client_app.train(_message(arrays), context)
    # Assert
    metrics = reply.content["metrics"]
    assert set(reply.content["arrays"].keys()) == set(arrays.keys())
    assert metrics["num-examples"] > 0 and "train_loss" in metrics
    assert all(f"{s}.seconds" in metrics for s in steps)
    changed = [k for k in arrays.keys()
               if not np.array_equal(arrays[k].numpy(), reply.content["arrays"][k].numpy())]
    assert changed, "training changed no weight"
    assert list(reply.content.config_records.keys()) == []
    if "depn" in steps:
        assert 0 < metrics["depn.edited"] <= 5
        assert len(metrics["depn.neurons"]) == metrics["depn.edited"]


def test_depn_when_last_edits_only_the_last_rounds_update():
    # Prepare: clients that edit only after the last round; the server's messages plan 2 rounds
    # (num-rounds), which the client follows over its run config's 4
    _, context, arrays = _setup(PII + ["client.pipeline=[sft,depn]", "client.depn.when=last",
                                       "rounds=4"])
    # Execute
    first = client_app.train(_message(arrays, server_round=1, **{"num-rounds": 2}),
                             context).content["metrics"]
    last = client_app.train(_message(arrays, server_round=2, **{"num-rounds": 2}),
                            context).content["metrics"]
    # Assert: round 1 declares nothing and detects nothing; round 2 edits as `every` would
    assert first["depn.edited"] == first["depn.detected"] == 0 and first["depn.neurons"] == []
    assert 0 < last["depn.edited"] <= 5
    assert len(last["depn.neurons"]) == last["depn.edited"]


def test_dp_epsilon_composes_over_rounds_in_the_context():
    # Prepare
    _, context, arrays = _setup(PII + ["client.pipeline=[dp_sgd]"])
    # Execute
    first = client_app.train(_message(arrays, server_round=1), context).content["metrics"]
    second = client_app.train(_message(arrays, server_round=2), context).content["metrics"]
    # Assert: the second round's ε covers both rounds, and so is larger
    assert 0 < first["dp_sgd.epsilon"] < second["dp_sgd.epsilon"]
    assert "dp-accountant" in context.state


def test_dp_epsilon_after_a_resume_covers_the_earlier_rounds():
    # Prepare: round 2 on a node whose state was lost (a resumed run), and the same round
    # on a node that kept its state from round 1
    _, kept, arrays = _setup(PII + ["client.pipeline=[dp_sgd]"])
    client_app.train(_message(arrays, server_round=1), kept)
    expected = client_app.train(_message(arrays, server_round=2), kept).content["metrics"]
    _, fresh, _ = _setup(PII + ["client.pipeline=[dp_sgd]"])
    # Execute
    resumed = client_app.train(_message(arrays, server_round=2), fresh).content["metrics"]
    # Assert
    assert resumed["dp_sgd.epsilon"] == pytest.approx(expected["dp_sgd.epsilon"])


def test_evaluate_reports_the_privacy_ledger():
    # Prepare
    _, context, arrays = _setup(PII)
    # Execute
    metrics = client_app.evaluate(_message(arrays, MessageType.EVALUATE), context).content["metrics"]
    # Assert
    assert len(metrics["privacy.exposure"]) == 2
    assert 0 <= metrics["privacy.exposure_mean"] <= 4 * 3.33
    assert 0 <= metrics["privacy.extraction_rate"] <= 1
    assert metrics["privacy.exposure_exact"] == 1.0  # 10^4 secrets: enumerated
    assert 0 <= metrics["privacy.exposure_digitwise"] <= 4 * 3.33
    assert 0 <= metrics["privacy.mia_auc"] <= 1  # against data.canary.heldout unseen canaries
    assert metrics["eval_loss"] > 0


def test_no_private_text_leaves_the_client():
    # Prepare
    cfg, context, arrays = _setup(PII + ["client.pipeline=[sft,depn]"])
    res = client_resources(json.dumps(dict(context.run_config), sort_keys=True), 0, 2)
    secrets = [c.secret for c in res.data.canaries]
    private = [r["prompt"] + r["completion"] for r in res.data.train if r["private_spans"]]
    # Execute
    replies = [client_app.train(_message(arrays), context),
               client_app.evaluate(_message(arrays, MessageType.EVALUATE), context)]
    # Assert: replies hold one ArrayRecord (weights) and numeric metrics; no string at all
    for reply in replies:
        assert _reply_strings(reply) == []
        for record in reply.content.metric_records.values():
            assert all(isinstance(v, (int, float, list)) for v in record.values())
    assert secrets and private


def test_query_sends_only_the_public_task_description():
    # Prepare
    _, context, _ = _setup(SMALL)
    res = client_resources(json.dumps(dict(context.run_config), sort_keys=True), 0, 2)
    query = Message(RecordDict({"config": ConfigRecord({"what": "task"})}), dst_node_id=1,
                    message_type=MessageType.QUERY)
    # Execute
    reply = client_app.query(query, context)
    # Assert
    sent = dict(reply.content["task"])
    assert sent == {"partition-id": 0, **res.data.task.describe()}
    examples = [r["prompt"].split("Input: ")[-1].split("\n")[0] for r in res.data.train]
    assert not any(example in value for example in examples for value in _reply_strings(reply))


def test_local_only_client_trains_and_evaluates_its_own_model():
    # Prepare: a local-only client trains once; then the server sends other (zeroed) weights.
    # The local-only server asks for this with its wire key (the client never reads the
    # strategy's name)
    _, context, arrays = _setup(SMALL + ["strategy.name=local"])
    keep = {KEEP_MODEL_KEY: True}
    trained = client_app.train(_message(arrays, **keep), context).content["arrays"]
    zeros = ArrayRecord({k: torch.zeros(a.shape) for k, a in arrays.items()})
    # Execute
    local_eval = client_app.evaluate(_message(zeros, MessageType.EVALUATE, **keep), context)
    _, fresh_context, _ = _setup(SMALL)
    direct_eval = client_app.evaluate(_message(trained, MessageType.EVALUATE), fresh_context)
    # Assert: the local-only client ignored the server's weights and used its own model
    assert local_eval.content["metrics"]["eval_loss"] == pytest.approx(
        direct_eval.content["metrics"]["eval_loss"])


@pytest.mark.parametrize("pipeline, noisy", [("dp_sgd", True), ("swing", True), ("kd", False)])
def test_privacy_noise_cannot_be_regenerated_from_the_run_config(pipeline, noisy):
    # Prepare: the adversary is the server: it knows the run config, the seed, the round and
    # the partition id, and replays the client's work on a node of its own
    overrides = PII + [f"client.pipeline=[{pipeline}]", "client.dp.noise_multiplier=1.0"]
    _, client, arrays = _setup(overrides)
    _, replay, _ = _setup(overrides)
    # Execute
    sent = client_app.train(_message(arrays), client).content["arrays"]
    guess = client_app.train(_message(arrays), replay).content["arrays"]
    # Assert: with the same inputs, a noisy update differs (DP-SGD's and swing's noise come
    # from the OS's entropy); plain distillation, without noise, is replayed bit for bit, so
    # the difference is the noise and nothing else
    differs = any(not np.array_equal(sent[k].numpy(), guess[k].numpy()) for k in sent.keys())
    assert differs == noisy


def test_dp_epsilon_is_accounted_for_the_poisson_sampling_that_runs(monkeypatch):
    # Prepare: record the batch sizes the client draws
    from opacus.accountants import RDPAccountant

    from fedprivacy.methods import dp_sgd
    from fedprivacy.privacy.dp import DPTrainer

    sizes = []
    step = DPTrainer.step
    monkeypatch.setattr(DPTrainer, "step", lambda self, b: sizes.append(len(b[0])) or step(self, b))
    cfg, context, arrays = _setup(PII + ["client.pipeline=[dp_sgd]", "train.steps=12"])
    n = len(client_resources(json.dumps(dict(context.run_config), sort_keys=True), 0, 2).data.train)
    # Execute
    metrics = client_app.train(_message(arrays), context).content["metrics"]
    # Assert: Poisson batches (sizes vary around B) at q = B/N, the q the accountant and the
    # preflight use; ε equals a fresh Opacus accountant's for that history
    q = cfg.train.batch_size / n
    assert dp_sgd.sample_rate(n, cfg.train.batch_size) == q
    assert len(sizes) == 12 and len(set(sizes)) > 1
    state = dict(context.state["dp-accountant"])
    assert state["sample_rate"] == [pytest.approx(q)] and state["steps"] == [12]
    reference = RDPAccountant()
    reference.history = [(cfg.client.dp.noise_multiplier, q, 12)]
    assert metrics["dp_sgd.epsilon"] == pytest.approx(reference.get_epsilon(cfg.client.dp.delta))


def _notes(path, n, who):
    path.write_text("".join(json.dumps({"text": f"{who} note {i}"}) + "\n" for i in range(n)))
    return path


def test_a_node_config_data_path_is_the_nodes_own_data(tmp_path):
    # Prepare: a run of node-local data (no data.path); this node names its own file
    overrides = SMALL + ["data.source=files", "data.path=",
                         "data.train_per_client=6", "data.val_per_client=2",
                         "data.test_per_client=2"]
    cfg, context, arrays = _setup(overrides)
    own = _notes(tmp_path / "alice.jsonl", 10, "alice")
    context.node_config["data-path"] = str(own)
    # Execute
    res = client_resources(json.dumps(dict(context.run_config), sort_keys=True), 0, 2, str(own))
    reply = client_app.train(_message(arrays), context)
    # Assert: all ten of the node's records, cut 6/2/2
    texts = sorted(r["completion"] for r in res.data.train + res.data.validation + res.data.test)
    assert texts == sorted(f"alice note {i}" for i in range(10))
    assert (len(res.data.train), len(res.data.validation), len(res.data.test)) == (6, 2, 2)
    assert reply.content["metrics"]["num-examples"] == 6


def test_a_node_data_path_needs_the_files_source_and_names_the_key(tmp_path):
    own = _notes(tmp_path / "bob.jsonl", 4, "bob")
    run = json.dumps(flatten(load_config(None, SMALL)), sort_keys=True)
    with pytest.raises(ValueError, match=r"^node_config data-path=.* needs data.source=files"):
        client_resources(run, 0, 2, str(own))
    run = json.dumps(flatten(load_config(None, SMALL + ["data.source=files"])), sort_keys=True)
    with pytest.raises(FileNotFoundError, match=r"^node_config data-path: data file not found"):
        client_resources(run, 0, 2, str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match=r"^data.path is empty .* --node-config .*data-path="):
        client_resources(run, 0, 2)  # node-local data, but this node names no file


def test_a_node_config_sets_the_clientapps_torch_threads():
    # Prepare: a node that asks for 1 thread, in a process that has more
    _, context, arrays = _setup(SMALL)
    torch.set_num_threads(2)
    context.node_config["torch-threads"] = 1
    try:
        # Execute: the ClientApp's lifespan, as Flower enters it around every message
        with client_app.app._lifespan(context):
            inside = torch.get_num_threads()
    finally:
        torch.set_num_threads(1)
    # Assert
    assert inside == 1


def test_evaluate_first_puts_the_received_models_evaluation_on_the_train_reply():
    # Prepare
    _, context, arrays = _setup(SMALL)
    # Execute: one train message that asks for the evaluation first, one evaluate message
    reply = client_app.train(_message(arrays, **{"evaluate-first": True}), context)
    alone = client_app.evaluate(_message(arrays, MessageType.EVALUATE), context)
    # Assert: the train reply carries exactly what the evaluate reply says about that model
    assert dict(reply.content["evaluation"]) == pytest.approx(dict(alone.content["metrics"]))
    assert "evaluation" not in client_app.train(_message(arrays), context).content
