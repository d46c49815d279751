"""Neuron editing through sites, on a tiny model of every supported family."""

import pytest
import torch
import transformers as tf

from fedprivacy import editing, sites

pytestmark = pytest.mark.integration

SMALL = dict(
    vocab_size=40,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
HEADS = dict(SMALL, head_dim=8)
BUILDERS = {
    "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL)),
    "qwen2": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**SMALL)),
    "mistral": lambda: tf.MistralForCausalLM(tf.MistralConfig(**SMALL)),
    "gemma": lambda: tf.GemmaForCausalLM(tf.GemmaConfig(**HEADS)),
    "gemma2": lambda: tf.Gemma2ForCausalLM(tf.Gemma2Config(**HEADS)),
    "gemma3": lambda: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**HEADS)),
    "gpt2": lambda: tf.GPT2LMHeadModel(
        tf.GPT2Config(vocab_size=40, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    ),
    "gpt_neox": lambda: tf.GPTNeoXForCausalLM(
        tf.GPTNeoXConfig(
            vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4,
        )
    ),
    "opt": lambda: tf.OPTForCausalLM(
        tf.OPTConfig(
            vocab_size=40, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
            num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=32,
        )
    ),
    "bert": lambda: tf.BertForMaskedLM(
        tf.BertConfig(
            vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4,
        )
    ),
}
FAMILY = {"gpt2": "gpt2", "gpt_neox": "gpt_neox", "opt": "opt", "bert": "bert"}
IDS = torch.tensor([[3, 17, 5, 29, 11, 8, 23, 2]])
NEURONS = {0: [1, 5, 5, 40], 1: [0, 63]}


def build(name: str) -> tf.PreTrainedModel:
    torch.manual_seed(0)
    return BUILDERS[name]().eval()


def scaled_by_hooks(model, neurons, factor) -> torch.Tensor:
    """Reference: logits when the chosen activations are multiplied by ``factor`` in a hook."""

    def hook(indices):
        def scale(hidden):
            hidden = hidden.clone()
            hidden[..., indices] *= factor
            return hidden

        return scale

    handles = [
        sites.ffn(model, layer).register_hook(hook(sorted(set(indices))))
        for layer, indices in neurons.items()
    ]
    try:
        with torch.no_grad():
            return model(input_ids=IDS).logits
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("name", list(BUILDERS))
def test_edit_equals_scaling_the_activation(name):
    # Prepare
    model = build(name)
    factor = 0.0 if name in ("llama", "gpt2", "bert") else 2.5
    expected = scaled_by_hooks(model, NEURONS, factor)
    with torch.no_grad():
        original = model(input_ids=IDS).logits

    # Execute
    editing.scale_neurons(model, NEURONS, factor)
    with torch.no_grad():
        edited = model(input_ids=IDS).logits

    # Assert
    assert sites.family(model).name == FAMILY.get(name, "llama")
    assert not torch.allclose(edited, original)
    torch.testing.assert_close(edited, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_resid_site_is_the_next_hidden_state(name):
    # Prepare
    model = build(name)
    seen = []
    site = sites.resid(model, 0)
    handle = site.module.register_forward_hook(lambda m, a, out: seen.append(site.stream(out)))

    # Execute
    with torch.no_grad():
        hidden_states = model(input_ids=IDS, output_hidden_states=True).hidden_states
    handle.remove()

    # Assert: HF's hidden_states[l + 1] is the output of block l (below the top block)
    assert len(hidden_states) == sites.num_layers(model) + 1
    torch.testing.assert_close(seen[0], hidden_states[1])


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_undo_restores_bit_exactly(name):
    # Prepare
    model = build(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    # Execute
    first = editing.scale_neurons(model, NEURONS, 0.0)
    second = editing.scale_neurons(model, {0: [1, 2]}, 3.0)
    assert len(editing.recorded_edits(model)) == 3
    second.undo()
    first.undo()

    # Assert
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert editing.recorded_edits(model) == []
    with pytest.raises(RuntimeError, match="already undone"):
        first.undo()


def test_gpt2_edit_touches_weight_rows_only():
    # Prepare
    model = build("gpt2")
    weight = sites.ffn(model, 1).weight
    original = weight.detach().clone()

    # Execute
    editing.scale_neurons(model, {1: [4]}, 0.0)

    # Assert
    assert torch.count_nonzero(weight[4]) == 0
    torch.testing.assert_close(weight[:4], original[:4], rtol=0, atol=0)
    torch.testing.assert_close(weight[5:], original[5:], rtol=0, atol=0)


def test_save_and_reload_keeps_weights_and_record(tmp_path):
    # Prepare
    model = build("llama")
    editing.scale_neurons(model, NEURONS, 0.0)
    editing.scale_neurons(model, {-1: [7]}, 4.0)

    # Execute
    model.save_pretrained(tmp_path)
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path)

    # Assert
    assert editing.recorded_edits(reloaded) == [
        {"layer": 0, "indices": [1, 5, 40], "factor": 0.0},
        {"layer": 1, "indices": [0, 63], "factor": 0.0},
        {"layer": 1, "indices": [7], "factor": 4.0},
    ]
    for layer in range(2):
        assert torch.equal(sites.ffn(reloaded, layer).weight, sites.ffn(model, layer).weight)
    assert torch.count_nonzero(sites.ffn(reloaded, 0).weight[:, [1, 5, 40]]) == 0


def test_bare_base_model_is_edited_through_sites():
    # Prepare
    torch.manual_seed(0)
    model = tf.LlamaModel(tf.LlamaConfig(**SMALL)).eval()
    with torch.no_grad():
        original = model(input_ids=IDS).last_hidden_state

    # Execute
    handle = editing.scale_neurons(model, {1: [3, 9]}, 0.0)
    with torch.no_grad():
        edited = model(input_ids=IDS).last_hidden_state
    handle.undo()

    # Assert
    assert torch.count_nonzero(model.layers[1].mlp.down_proj.weight[:, [3, 9]]) > 0
    assert not torch.allclose(edited, original)


def test_out_of_range_neuron_is_rejected():
    # Prepare
    model = build("opt")
    before = {k: v.clone() for k, v in model.state_dict().items()}

    # Execute
    with pytest.raises(IndexError, match=r"\[0, 64\)"):
        editing.scale_neurons(model, {0: [3], 1: [64]}, 0.0)

    # Assert: nothing was edited, nothing recorded
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert editing.recorded_edits(model) == []
