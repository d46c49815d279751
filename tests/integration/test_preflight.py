"""Bad input fails before a run starts, with an error naming the key, and writes nothing."""

import json

import pytest
from transformers import BloomConfig, BloomForCausalLM

from fedprivacy.config import ModelConfig, load_config
from fedprivacy.data.federated import build_client_data
from fedprivacy.models import ModelLoadError, load_tokenizer
from fedprivacy.simulations import runner
from fedprivacy.simulations.preflight import client_data, preflight
from fedprivacy.simulations.runner import run_experiment
from fedprivacy.sites import UnsupportedArchitectureError

pytestmark = pytest.mark.integration
SMALL = ["model.hidden_size=32", "model.num_layers=2", "simulation.num_clients=2",
         "data.source=pii", "data.pii_records=10", "data.canary.repeats=1"]


@pytest.fixture(autouse=True)
def _no_simulation(monkeypatch):
    """A check that misses its bad input fails here at once, not after a whole simulation."""
    def submit(*args, **kwargs):
        raise AssertionError("the preflight let bad input through to the simulation")

    monkeypatch.setattr(runner, "submit", submit)


def _expect_failure(tmp_path, overrides, error, match):
    out = tmp_path / "run"
    cfg = load_config(None, SMALL + overrides + [f"out_dir={out}"])
    with pytest.raises(error, match=match):
        run_experiment(cfg, progress=False)
    assert not out.exists(), "a failed preflight must not write a run folder"


def _bloom_folder(tmp_path):
    """A tiny BLOOM (no site table for it) saved as a local model folder."""
    tok = load_tokenizer(ModelConfig())
    folder = tmp_path / "bloom"
    BloomForCausalLM(BloomConfig(vocab_size=len(tok), hidden_size=16, n_layer=1, n_head=2)
                     ).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_depn_on_an_unsupported_architecture(tmp_path):
    # Prepare
    folder = _bloom_folder(tmp_path)
    # Execute / Assert
    _expect_failure(tmp_path, ["model.preset=", f"model.name_or_path={folder}",
                               "client.pipeline=[sft,depn]"],
                    UnsupportedArchitectureError, "BloomForCausalLM")


def test_canary_longer_than_the_context(tmp_path):
    _expect_failure(tmp_path, ["data.max_length=8"], ValueError, "data.max_length")


def test_unreachable_epsilon_target(tmp_path):
    _expect_failure(tmp_path, ["client.pipeline=[dp_sgd]", "client.dp.target_epsilon=0.0001"],
                    ValueError, "client.dp.target_epsilon")


def _rows(path, n):
    path.write_text("".join(json.dumps({"text": f"record {i}"}) + "\n" for i in range(n)))
    return path


def test_a_client_without_validation_records_is_named_even_when_not_the_first(tmp_path):
    # Prepare: 5 records for 2 clients: client 0 gets 3 (1 for validation), client 1 gets 2 (0)
    data = _rows(tmp_path / "five.jsonl", 5)
    # Execute / Assert
    _expect_failure(tmp_path, ["data.source=files", f"data.path={data}"], ValueError,
                    r"data.path .*five.jsonl.*clients \[1\] .*client 1: train=2, validation=0")


def test_too_few_records_to_partition_name_the_data_path(tmp_path):
    # Prepare: 1 record for 2 clients
    data = _rows(tmp_path / "one.jsonl", 1)
    # Execute / Assert
    _expect_failure(tmp_path, ["data.source=files", f"data.path={data}"], ValueError,
                    r"data.path .*one.jsonl.*simulation.num_clients=2")


def test_empty_model_folder(tmp_path):
    # Prepare
    folder = tmp_path / "empty-model"
    folder.mkdir()
    # Execute / Assert
    _expect_failure(tmp_path, ["model.preset=", f"model.name_or_path={folder}"], ModelLoadError,
                    "model.name_or_path: .*empty-model.* no config.json")


@pytest.mark.parametrize("overrides", [
    ["data.source=tasks", "data.partition=iid", "data.tasks=[sentiment,parity]"],
    ["data.source=tasks", "data.partition=dirichlet", "data.tasks=[sentiment,parity]"],
    ["data.source=files"],
])
def test_client_data_is_what_each_client_builds(tmp_path, overrides):
    # Prepare: 3 clients, few records each (the files case reads 30 rows)
    data = _rows(tmp_path / "rows.jsonl", 30)
    cfg = load_config(None, ["simulation.num_clients=3", "data.train_per_client=6",
                             "data.val_per_client=2", "data.test_per_client=2",
                             f"data.path={data}", *overrides])
    # Execute
    built = client_data(cfg)
    # Assert
    assert built == [build_client_data(cfg.data, i, 3, cfg.seed) for i in range(3)]
    assert all(c.train and c.validation for c in built)


@pytest.mark.parametrize("overrides", [
    [],
    ["data.source=tasks", "data.partition=by_task"],
    ["data.source=files", "server.eval_source=file"],
    ["train.device=cpu", "client.pipeline=[dp_sgd,depn]"],
])
def test_a_valid_config_passes(tmp_path, overrides):
    # Prepare: 40 rows give each of 2 clients 10 training and 5 validation records
    data = _rows(tmp_path / "rows.jsonl", 40)
    cfg = load_config(None, SMALL + [f"data.path={data}", f"server.eval_path={data}",
                                     "data.train_per_client=16", "data.val_per_client=8",
                                     "data.test_per_client=8", *overrides])
    # Execute / Assert: no error
    assert preflight(cfg) is None


def test_alignment_stage_without_its_data_is_named_before_any_round(tmp_path):
    _expect_failure(tmp_path, ["alignment=[ircan]", "alignment.ircan.data=file",
                               f"alignment.ircan.path={tmp_path / 'missing.jsonl'}"],
                    ValueError, r"alignment stage 'ircan': alignment.ircan.path: no conflict "
                                r"file at .*missing.jsonl")


def test_contrans_map_on_the_world_text_without_the_world_is_named(tmp_path):
    _expect_failure(tmp_path, ["alignment=[contrans]", "alignment.contrans.source=self",
                               "alignment.contrans.data=sentiment",
                               "alignment.contrans.map_texts=corpus"],
                    ValueError, r"alignment stage 'contrans': map_texts=corpus .* needs "
                                r"data.source=concepts")


def test_alignment_stage_on_an_unsupported_architecture_is_named(tmp_path):
    # Prepare: training alone would run on BLOOM, IRCAN cannot
    folder = _bloom_folder(tmp_path)
    # Execute / Assert
    _expect_failure(tmp_path, ["model.preset=", f"model.name_or_path={folder}",
                               "alignment=[ircan]"],
                    UnsupportedArchitectureError, "alignment stage 'ircan': .*BloomForCausalLM")
