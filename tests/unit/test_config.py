"""Config schema: validation messages name the key, flatten/unflatten round trip."""

from pathlib import Path

import pytest
import tomllib

from fedprivacy.config import ConfigError, ExperimentConfig, flatten, load_config, unflatten

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("override, key", [
    (["rounds=-1"], "rounds"),
    (["strategy.fraction_train=1.5"], "strategy.fraction_train"),
    (["strategy.fraction_evaluate=-0.1"], "strategy.fraction_evaluate"),
    (["model.presett=tiny-llama"], "model.presett"),
    (["rounds=abc"], "rounds"),
    (["data.partition=random"], "data.partition"),
    (["client.steps=[depn]"], "client.steps"),
    (["client.steps=[sft,dp_sgd]"], "client.steps"),
    (["strategy.min_clients=9"], "strategy.min_clients"),
    (["data.source=files", "data.path=/no/such/file.jsonl"], "data.path"),
    (["train.lr=0"], "train.lr"),
])
def test_bad_value_names_the_key(override, key):
    # Execute
    with pytest.raises(ConfigError) as err:
        load_config(None, override)
    # Assert
    assert str(err.value).startswith(key), str(err.value)


def test_missing_file_names_the_file(tmp_path):
    # Prepare
    missing = tmp_path / "nope.yaml"
    # Execute / Assert
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(missing)


def test_unknown_key_in_yaml_names_key_and_file(tmp_path):
    # Prepare
    file = tmp_path / "bad.yaml"
    file.write_text("train:\n  stepz: 3\n")
    # Execute
    with pytest.raises(ConfigError) as err:
        load_config(file)
    # Assert
    assert "train.stepz" in str(err.value) and "bad.yaml" in str(err.value)


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["rounds"])


def test_flatten_unflatten_round_trip():
    # Prepare
    cfg = load_config(ROOT / "configs" / "quickstart.yaml",
                      ["rounds=7", "client.steps=[sft,depn]", "client.fail_partitions=[1]",
                       "strategy.fraction_evaluate=0.5", "data.canary.repeats=3"])
    # Execute
    flat = flatten(cfg)
    back = unflatten(flat)
    # Assert
    assert back == cfg
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
    assert flat["client.steps"] == '["sft", "depn"]'


def test_unflatten_fills_defaults_and_rejects_unknown_keys():
    # Execute
    cfg = unflatten({"rounds": 2})
    # Assert
    assert cfg.rounds == 2 and cfg.model == ExperimentConfig().model
    with pytest.raises(ConfigError, match="model.nope"):
        unflatten({"model.nope": 1})


def test_quickstart_yaml_is_the_embedded_default():
    # Execute
    from_file = load_config(ROOT / "configs" / "quickstart.yaml")
    # Assert
    assert from_file == ExperimentConfig()


def test_pyproject_flower_config_matches_the_schema():
    # Prepare: `flwr run .` drops --run-config keys that the app config does not declare
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    # Execute
    flat_declared = {}
    def walk(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat_declared[f"{prefix}{k}"] = v
    walk(declared)
    # Assert
    assert flat_declared == flatten(ExperimentConfig())


def test_empty_override_is_the_empty_string():
    # Execute: the shell turns model.preset='' into model.preset=
    cfg = load_config(None, ["model.preset=", "model.name_or_path=/some/folder"])
    # Assert
    assert cfg.model.preset == "" and cfg.model.name_or_path == "/some/folder"
