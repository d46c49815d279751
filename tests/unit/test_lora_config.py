"""``model.adapter`` settings: defaults, and bad values refused with the key's name."""

import pytest

from fedprivacy.config import ConfigError, flatten, load_config, unflatten

pytestmark = pytest.mark.unit


def test_lora_defaults_target_the_attention_projections():
    # Execute
    cfg = load_config(None, ["model.adapter=lora"])
    # Assert
    mc = cfg.model
    assert (mc.adapter, mc.lora_r, mc.lora_alpha, mc.lora_dropout) == ("lora", 8, 16.0, 0.0)
    assert mc.lora_targets == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert unflatten(flatten(cfg)).model == mc


@pytest.mark.parametrize("override, key", [
    ("model.adapter=qlora", "model.adapter"),
    ("model.lora_r=0", "model.lora_r"),
    ("model.lora_alpha=0", "model.lora_alpha"),
    ("model.lora_dropout=1.0", "model.lora_dropout"),
    ("model.lora_targets=[]", "model.lora_targets"),
])
def test_bad_lora_settings_name_the_key(override, key):
    # Execute / Assert
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        load_config(None, ["model.adapter=lora", override])


def test_lora_with_depn_on_the_local_only_server_is_refused():
    # Execute / Assert
    with pytest.raises(ConfigError, match=r"^model.adapter: .*strategy.name local"):
        load_config(None, ["model.adapter=lora", "client.pipeline=[sft,depn]",
                           "strategy.name=local"])
    assert load_config(None, ["model.adapter=lora", "client.pipeline=[sft,depn]"])


def test_lora_settings_are_not_checked_without_an_adapter():
    # Execute
    cfg = load_config(None, ["model.lora_r=0"])
    # Assert
    assert cfg.model.adapter == "none"
