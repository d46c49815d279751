"""Config schema: validation messages name the key, flatten/unflatten round trip."""

import tomllib
from pathlib import Path

import pytest

from fedprivacy.config import ConfigError, default_config, flatten, load_config, unflatten

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("override, key", [
    (["rounds=-1"], "rounds"),
    (["strategy.fraction_train=1.5"], "strategy.fraction_train"),
    (["strategy.fraction_evaluate=-0.1"], "strategy.fraction_evaluate"),
    (["model.presett=tiny-llama"], "model.presett"),
    (["rounds=abc"], "rounds"),
    (["data.partition=random"], "data.partition"),
    (["client.pipeline=[depn]"], "client.pipeline"),
    (["client.pipeline=[sft,dp_sgd]"], "client.pipeline"),
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
                      ["rounds=7", "client.pipeline=[sft,depn]", "client.fail_partitions=[1]",
                       "strategy.fraction_evaluate=0.5", "data.canary.repeats=3"])
    # Execute
    flat = flatten(cfg)
    back = unflatten(flat)
    # Assert
    assert back == cfg
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
    assert flat["client.pipeline"] == '["sft", "depn"]'


def test_unflatten_fills_defaults_and_rejects_unknown_keys():
    # Execute
    cfg = unflatten({"rounds": 2})
    # Assert
    assert cfg.rounds == 2 and cfg.model == default_config().model
    with pytest.raises(ConfigError, match="model.nope"):
        unflatten({"model.nope": 1})


def test_quickstart_yaml_is_the_embedded_default():
    # Execute
    from_file = load_config(ROOT / "configs" / "quickstart.yaml")
    # Assert
    assert from_file == default_config()


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
    assert flat_declared == flatten(default_config())


def test_empty_override_is_the_empty_string():
    # Execute: the shell turns model.preset='' into model.preset=
    cfg = load_config(None, ["model.preset=", "model.name_or_path=/some/folder"])
    # Assert
    assert cfg.model.preset == "" and cfg.model.name_or_path == "/some/folder"


@pytest.mark.parametrize("override, key", [
    (["train.lr=inf"], "train.lr"),
    (["strategy.round_timeout=nan"], "strategy.round_timeout"),
    (["client.swing.detector=regex"], "client.swing.detector"),
    (["client.swing.temperature_map=cubic"], "client.swing.temperature_map"),
    (["client.swing.t0=0"], "client.swing.t0"),
    (["client.swing.t_max=-1"], "client.swing.t_max"),
    (["client.swing.noise=uniform"], "client.swing.noise"),
    (["client.dp.delta=1.5"], "client.dp.delta"),
    (["client.dp.max_grad_norm=0"], "client.dp.max_grad_norm"),
    (["client.dp.poisson_sampling=false"], "client.dp.poisson_sampling"),
    (["client.kd.temperature=0"], "client.kd.temperature"),
    (["client.depn.ig_steps=0"], "client.depn.ig_steps"),
    (["strategy.fewfedweight.client_weighting=max"], "strategy.fewfedweight.client_weighting"),
    (["strategy.name=fedprox"], "strategy.name"),
    (["server.eval_source=file"], "server.eval_path"),
    (["data.canary.heldout=-1"], "data.canary.heldout"),
])
def test_method_settings_are_checked_before_anything_starts(override, key):
    # Execute: a bad method setting fails in the config, not inside a ClientApp
    with pytest.raises(ConfigError) as err:
        load_config(None, override)
    # Assert
    assert str(err.value).startswith(key), str(err.value)


def test_swing_noise_none_is_accepted():
    # Execute: the code supports it, so the schema does
    cfg = load_config(None, ["client.swing.noise=none"])
    # Assert
    assert cfg.client.swing.noise == "none"


@pytest.mark.parametrize("override, old, new", [
    ("client.steps=[sft]", "client.steps", "client.pipeline"),
    ("client.depn.steps=4", "client.depn.steps", "client.depn.ig_steps"),
])
def test_renamed_keys_name_the_new_key(override, old, new, tmp_path):
    # Execute / Assert: as an override, in a YAML file and in a run_config
    with pytest.raises(ConfigError, match=f"{old}: renamed to {new}"):
        load_config(None, [override])
    key, value = override.split("=")
    file = tmp_path / "old.yaml"
    parts = key.split(".")
    file.write_text("".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(parts[:-1]))
                    + f"{'  ' * (len(parts) - 1)}{parts[-1]}: {value}\n")
    with pytest.raises(ConfigError, match=f"{old}: renamed to {new}"):
        load_config(file)
    with pytest.raises(ConfigError, match=f"{old}: renamed to {new}"):
        unflatten({key: value})


def test_choice_tables_equal_the_code_that_dispatches_on_them():
    # Prepare: the schema's allowed values are declared in the light method modules; the heavy
    # modules that dispatch on them must know exactly those names
    from fedprivacy import aggregation, pseudo
    from fedprivacy.methods import fewfedweight
    from fedprivacy.methods import swing as swing_method
    from fedprivacy.privacy import detectors, swing
    # Assert
    assert set(detectors.DETECTORS) == set(swing_method.DETECTOR_BUILDERS)
    assert set(swing.TEMPERATURE_MAPS) == set(swing_method.TEMPERATURE_MAP_NAMES)
    assert set(swing.NOISE_MODELS) == set(swing_method.NOISE_MODEL_NAMES)
    assert set(pseudo.SAMPLE_WEIGHTINGS) == set(fewfedweight.SAMPLE_WEIGHTING_NAMES)
    assert set(aggregation.CLIENT_WEIGHTINGS) == set(fewfedweight.CLIENT_WEIGHTING_NAMES)
