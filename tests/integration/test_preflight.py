"""Bad input fails before a run starts, with an error naming the key, and writes nothing."""

import pytest
from transformers import BloomConfig, BloomForCausalLM

from fedprivacy.config import load_config
from fedprivacy.models import load_tokenizer
from fedprivacy.config import ModelConfig
from fedprivacy.sites import UnsupportedArchitectureError
from simulations.runner import run_experiment

pytestmark = pytest.mark.integration
SMALL = ["model.hidden_size=32", "model.num_layers=2", "simulation.num_clients=2",
         "data.source=pii", "data.pii_records=10", "data.canary.repeats=1"]


def _expect_failure(tmp_path, overrides, error, match):
    out = tmp_path / "run"
    cfg = load_config(None, SMALL + overrides + [f"out_dir={out}"])
    with pytest.raises(error, match=match):
        run_experiment(cfg, progress=False)
    assert not out.exists(), "a failed preflight must not write a run folder"


def test_depn_on_an_unsupported_architecture(tmp_path):
    # Prepare: a tiny BLOOM (no site table for it) saved as a local model folder
    tok = load_tokenizer(ModelConfig())
    folder = tmp_path / "bloom"
    BloomForCausalLM(BloomConfig(vocab_size=len(tok), hidden_size=16, n_layer=1, n_head=2)
                     ).save_pretrained(folder)
    tok.save_pretrained(folder)
    # Execute / Assert
    _expect_failure(tmp_path, ["model.preset=", f"model.name_or_path={folder}",
                               "client.steps=[sft,depn]"],
                    UnsupportedArchitectureError, "BloomForCausalLM")


def test_canary_longer_than_the_context(tmp_path):
    _expect_failure(tmp_path, ["data.max_length=8"], ValueError, "data.max_length")


def test_unreachable_epsilon_target(tmp_path):
    _expect_failure(tmp_path, ["client.steps=[dp_sgd]", "client.dp.target_epsilon=0.0001"],
                    ValueError, "client.dp.target_epsilon")
