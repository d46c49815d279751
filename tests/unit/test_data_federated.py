"""Unit tests of per-client data composition and the server's held-out set."""

import json
import os
import subprocess
import sys

import pytest

from fedprivacy.data.federated import CanaryConfig, DataConfig, build_client_data, build_server_data
from fedprivacy.data.records import record_text
from fedprivacy.data.tasks import TASKS

pytestmark = pytest.mark.unit


def _texts(records: list) -> set:
    return {record_text(r) for r in records}


def test_by_task_client_gets_its_own_task_and_splits():
    # Prepare
    cfg = DataConfig(tasks=["parity", "topic", "capital"], train_per_client=16, val_per_client=8, test_per_client=8)

    # Execute
    clients = [build_client_data(cfg, i, 5, seed=0) for i in range(5)]

    # Assert
    assert [c.task.name for c in clients] == ["parity", "topic", "capital", "parity", "topic"]
    for client in clients:
        assert (len(client.train), len(client.validation), len(client.test)) == (16, 8, 8)
        assert {r["task"] for r in client.train + client.validation + client.test} == {client.task.name}
        assert not _texts(client.train) & _texts(client.validation + client.test)
        assert client.canaries == []
    assert clients[0].train != clients[3].train


def test_empty_task_list_means_all_tasks_in_order():
    # Prepare
    cfg = DataConfig(train_per_client=4, val_per_client=2, test_per_client=2)

    # Execute
    names = [build_client_data(cfg, i, len(TASKS), seed=1).task.name for i in range(len(TASKS))]

    # Assert
    assert names == list(TASKS)


def test_same_arguments_give_the_same_data_in_another_process():
    # Prepare
    cfg = DataConfig(source="pii", pii_records=20, val_per_client=4, test_per_client=4,
                     canary=CanaryConfig(count=2, repeats=3))
    here = build_client_data(cfg, 1, 3, seed=9)
    code = (
        "import json; from fedprivacy.data.federated import *; "
        "d = build_client_data(DataConfig(source='pii', pii_records=20, val_per_client=4, test_per_client=4, "
        "canary=CanaryConfig(count=2, repeats=3)), 1, 3, seed=9); "
        "print(json.dumps([d.train, d.validation, d.test, [c.text for c in d.canaries]]))"
    )

    # Execute
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )

    # Assert
    assert json.loads(result.stdout) == [here.train, here.validation, here.test, [c.text for c in here.canaries]]


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_pooled_tasks_are_partitioned_without_overlap(scheme):
    # Prepare
    cfg = DataConfig(tasks=["sentiment", "parity", "topic"], partition=scheme, dirichlet_alpha=1.0,
                     train_per_client=20, val_per_client=10, test_per_client=10)

    # Execute
    clients = [build_client_data(cfg, i, 4, seed=2) for i in range(4)]

    # Assert
    every = [record_text(r) for c in clients for r in c.train + c.validation + c.test]
    assert len(every) == len(set(every)) >= 4 * 40
    assert all(c.task is None and c.train for c in clients)
    if scheme == "iid":
        assert all(len(c.train) == 2 * len(c.validation) == 2 * len(c.test) for c in clients)
        assert all(len({r["task"] for r in c.train}) == 3 for c in clients)


def test_pii_client_holds_its_canaries_and_public_eval_splits():
    # Prepare
    cfg = DataConfig(source="pii", pii_records=30, val_per_client=6, test_per_client=6,
                     canary=CanaryConfig(count=2, repeats=4, digits=5))

    # Execute
    first, second = build_client_data(cfg, 0, 2, seed=0), build_client_data(cfg, 1, 2, seed=0)

    # Assert
    assert len(first.train) == 2 * 30 + 2 * 4  # PII sentences, canaries, as many public ones
    assert sum(bool(r["private_spans"]) for r in first.train) == 30 + 2 * 4
    held_out = {record_text(r) for r in first.validation + first.test}
    assert held_out.isdisjoint(record_text(r) for r in first.train)
    for canary in first.canaries:
        assert len(canary.secret) == 5
        assert sum(record_text(r) == canary.text for r in first.train) == 4
    assert {c.secret for c in first.canaries}.isdisjoint(c.secret for c in second.canaries)
    assert all(r["private_spans"] == [] for r in first.validation + first.test)
    assert (len(first.validation), len(first.test)) == (6, 6)
    assert first.task is None


def test_files_source_partitions_the_users_file(tmp_path):
    # Prepare
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"line {i}"}) for i in range(40)))
    cfg = DataConfig(source="files", path=str(path), partition="iid", train_per_client=2,
                     val_per_client=1, test_per_client=1)

    # Execute
    clients = [build_client_data(cfg, i, 2, seed=0) for i in range(2)]

    # Assert
    assert [(len(c.train), len(c.validation), len(c.test)) for c in clients] == [(10, 5, 5)] * 2
    assert len(_texts(clients[0].train + clients[1].train)) == 20


def test_public_client_holds_only_pii_free_text_of_its_own():
    # Prepare
    cfg = DataConfig(source="public", pii_records=30, val_per_client=6, test_per_client=6)

    # Execute
    first, second = build_client_data(cfg, 0, 2, seed=0), build_client_data(cfg, 1, 2, seed=0)
    private = build_client_data(DataConfig(source="pii", pii_records=30, val_per_client=6,
                                           test_per_client=6), 0, 2, seed=0)

    # Assert: no PII, no canary; held-out sentences apart from training; drawn per client
    assert (len(first.train), len(first.validation), len(first.test)) == (30, 6, 6)
    assert all(r["private_spans"] == [] for r in first.train + first.validation + first.test)
    assert first.canaries == [] and first.heldout_canaries == []
    held_out = {record_text(r) for r in first.validation + first.test}
    assert held_out.isdisjoint(record_text(r) for r in first.train)
    assert [record_text(r) for r in first.train] != [record_text(r) for r in second.train]
    assert not {record_text(r) for r in first.train} & {
        record_text(r) for r in private.train if r["private_spans"]}


@pytest.mark.parametrize("source", ["tasks", "pii"])
def test_server_data_holds_no_private_text(source):
    # Prepare
    cfg = DataConfig(source=source, tasks=["parity", "larger"], pii_records=20, train_per_client=30,
                     val_per_client=10, test_per_client=5, canary=CanaryConfig(count=1, repeats=2))

    # Execute
    held_out = build_server_data(cfg, "auto", "", 40, 4, seed=3)

    # Assert: no PII span, no client's private string (PII, canary secret) in any server text;
    # the set is the server's own: generated from its seed, the same in every process
    clients = [build_client_data(cfg, i, 4, seed=3) for i in range(4)]
    private = {(r["prompt"] + r["completion"])[a:b] for c in clients for r in c.train
               for a, b in r["private_spans"]}
    private |= {canary.secret for c in clients for canary in c.canaries}
    texts = _texts(held_out)
    assert held_out and all(r["private_spans"] == [] for r in held_out)
    assert not any(secret in text for secret in private for text in texts)
    assert held_out == build_server_data(cfg, "auto", "", 40, 4, seed=3)
    if source == "pii":
        assert private  # the check above had something to look for
    if source == "tasks":
        assert {r["task"] for r in held_out} == {"parity", "larger"}


@pytest.mark.parametrize(
    "cfg, partition_id, name",
    [
        (DataConfig(source="web"), 0, "data.source"),
        (DataConfig(partition="shards"), 0, "data.partition"),
        (DataConfig(), 3, "partition_id"),
        (DataConfig(tasks=["parity", "poetry"]), 0, "poetry"),
    ],
)
def test_bad_config_is_named(cfg, partition_id, name):
    # Prepare
    num_partitions = 3

    # Execute
    with pytest.raises(ValueError) as error:
        build_client_data(cfg, partition_id, num_partitions, seed=0)

    # Assert
    assert name in str(error.value)


def test_task_text_holds_the_tasks_prompts_and_no_answer():
    # Prepare
    cfg = DataConfig(source="task_text", tasks=["review_polarity", "pair_kind"],
                     train_per_client=40, val_per_client=8, test_per_client=8)
    # Execute
    clients = [build_client_data(cfg, i, 2, seed=4) for i in range(2)]
    server = build_server_data(cfg, "auto", "", 20, 2, seed=4)
    # Assert: every text is a configured task's prompt, up to the answer cue and without a label;
    # both tasks in each client's training split; clients draw their own; the same in any call
    labels = {"positive", "negative", "fruit", "animal", "tool", "vehicle"}
    for data in clients:
        assert [len(data.train), len(data.validation), len(data.test)] == [40, 8, 8]
        texts = [r["completion"] for r in data.train + data.validation + data.test]
        assert all(r["prompt"] == "" and r["private_spans"] == [] for r in data.train)
        assert all(t.endswith("\nAnswer:") and t.split("\n")[1].startswith("Input: ") for t in texts)
        assert not any(set(t.split("\n")[1].split()) & labels for t in texts)
        assert {r["task"] for r in data.train} == {"review_polarity-text", "pair_kind-text"}
    assert clients[0].train != clients[1].train
    assert clients[0].train == build_client_data(cfg, 0, 2, seed=4).train
    assert len(server) == 20 and all(r["task"].endswith("-text") for r in server)
