"""``model.name_or_path`` may name a packaged model (`fedprivacy.models.PACKAGED`)."""

import pytest

from fedprivacy.config import ModelConfig
from fedprivacy.models import packaged, smollm2_config

pytestmark = pytest.mark.unit


def test_a_packaged_name_stands_for_its_folder_and_gguf_file():
    # Prepare
    mc = ModelConfig(preset="", name_or_path="smollm2", lora_r=4)
    # Execute
    found = packaged(mc)
    # Assert: the package's folder and file; the other settings are kept
    assert (found.name_or_path, found.gguf_file) == (smollm2_config().name_or_path,
                                                     smollm2_config().gguf_file)
    assert found.lora_r == 4


def test_a_local_folder_a_preset_or_a_hub_name_is_left_alone(tmp_path, monkeypatch):
    # Prepare: a local folder named like a packaged model, reached as ./smollm2
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2").mkdir()
    configs = [ModelConfig(preset="", name_or_path="./smollm2"),
               ModelConfig(preset="tiny-llama", name_or_path="smollm2"),
               ModelConfig(preset="", name_or_path="HuggingFaceTB/SmolLM2-135M")]
    # Execute / Assert
    assert [packaged(mc) for mc in configs] == configs
