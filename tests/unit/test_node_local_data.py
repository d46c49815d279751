"""Node-local data: `data.path` empty means every client holds a file of its own (a deployment
node's `--node-config data-path`, or `data.node_paths[i]` in a simulation)."""

import json

import pytest

from fedprivacy.config import ConfigError, load_config
from fedprivacy.data.federated import build_client_data

pytestmark = pytest.mark.unit


def _notes(path, n, who):
    path.write_text("".join(json.dumps({"text": f"{who} {i}"}) + "\n" for i in range(n)))
    return str(path)


def test_client_i_holds_exactly_the_records_of_its_own_file(tmp_path):
    # Prepare
    files = [_notes(tmp_path / "a.jsonl", 5, "a"), _notes(tmp_path / "b.jsonl", 7, "b")]
    cfg = load_config(None, ["data.source=files", "data.path=", f"data.node_paths=[{','.join(files)}]",
                             "simulation.num_clients=2", "strategy.min_clients=2"])
    # Execute
    clients = [build_client_data(cfg.data, i, 2, cfg.seed) for i in range(2)]
    # Assert: no record crosses from one client's file to the other
    for who, n, data in (("a", 5, clients[0]), ("b", 7, clients[1])):
        texts = sorted(r["completion"] for r in data.train + data.validation + data.test)
        assert texts == sorted(f"{who} {i}" for i in range(n))


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.node_paths=[x.jsonl]"], r"^data.node_paths: needs data.source=files and an empty"),
    (["data.source=files", "data.path=", "data.node_paths=[{a}]"],
     r"^data.node_paths: must name one file per client \(simulation.num_clients=2\)"),
    (["data.source=files", "data.path=", "data.node_paths=[{a},{missing}]"],
     r"^data.node_paths\[1\]: file does not exist"),
])
def test_bad_node_paths_are_refused_naming_the_key(tmp_path, overrides, message):
    a = _notes(tmp_path / "a.jsonl", 3, "a")
    overrides = [o.format(a=a, missing=tmp_path / "missing.jsonl") for o in overrides]
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides + ["simulation.num_clients=2", "strategy.min_clients=2"])
