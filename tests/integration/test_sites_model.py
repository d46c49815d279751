"""Named sites on tiny LLaMA and GPT-2 models: cached activations and residual-stream hooks
against Hugging Face's hidden states and a forward pass written out by hand."""

import pytest
import torch
import transformers as tf

from fedprivacy import sites

pytestmark = pytest.mark.integration

LAYERS, VOCAB = 3, 40
IDS = torch.tensor([[3, 17, 5, 29, 11, 8], [2, 9, 31, 4, 4, 20]])


def tiny_llama() -> tf.LlamaForCausalLM:
    torch.manual_seed(0)
    return tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2)).eval()


def tiny_gpt2() -> tf.GPT2LMHeadModel:
    torch.manual_seed(0)
    return tf.GPT2LMHeadModel(tf.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=LAYERS, n_head=4, n_positions=32)).eval()


BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2}


def causal_mask(length: int) -> torch.Tensor:
    return torch.full((length, length), float("-inf")).triu(1)[None, None]


@torch.no_grad()
def manual_logits(model, input_ids, add_after: int, vector: torch.Tensor) -> torch.Tensor:
    """The model's forward written out block by block, ``vector`` added to the residual stream
    after block ``add_after``."""
    length = input_ids.shape[1]
    positions = torch.arange(length)[None]
    mask = causal_mask(length)
    llama = isinstance(model, tf.LlamaForCausalLM)
    base = model.model if llama else model.transformer
    if llama:
        hidden = base.embed_tokens(input_ids)
        rotary = base.rotary_emb(hidden, positions)
        extra = {"position_ids": positions, "position_embeddings": rotary}
        layers, final_norm = base.layers, base.norm
    else:
        hidden = base.wte(input_ids) + base.wpe(positions)
        extra = {}
        layers, final_norm = base.h, base.ln_f
    for layer, block in enumerate(layers):
        out = block(hidden, attention_mask=mask, **extra)
        hidden = out if isinstance(out, torch.Tensor) else out[0]
        if layer == add_after:
            hidden = hidden + vector
    return model.lm_head(final_norm(hidden))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_cache_equals_hugging_face_hidden_states(name):
    # Prepare
    model = BUILDERS[name]()
    names = [f"resid.{layer}" for layer in range(LAYERS)] + ["ffn.0", "ffn.2"]
    down_inputs = {}
    resolved = sites.Sites(model)
    handles = [resolved.ffn(layer).module.register_forward_pre_hook(
        lambda m, args, layer=layer: down_inputs.__setitem__(layer, args[0])) for layer in (0, 2)]

    # Execute
    with torch.no_grad():
        logits, cache = sites.run_with_cache(model, names=names, input_ids=IDS)
        reference = model(input_ids=IDS, output_hidden_states=True)
    for handle in handles:
        handle.remove()

    # Assert: hidden_states[l + 1] is block l's output below the top (the top one is normed)
    for layer in range(LAYERS - 1):
        torch.testing.assert_close(cache[f"resid.{layer}"], reference.hidden_states[layer + 1])
    top = cache[f"resid.{LAYERS - 1}"]
    assert top.shape == reference.hidden_states[-1].shape
    for layer in (0, 2):
        torch.testing.assert_close(cache[f"ffn.{layer}"], down_inputs[layer])
        assert cache[f"ffn.{layer}"].shape == (*IDS.shape, resolved.d_ff)
    torch.testing.assert_close(logits, reference.logits)


@pytest.mark.parametrize("layer", [0, LAYERS - 1])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_resid_hook_adding_a_vector_equals_adding_it_by_hand(name, layer):
    # Prepare
    model = BUILDERS[name]()
    torch.manual_seed(1)
    vector = torch.randn(model.config.hidden_size)
    plain_by_hand = manual_logits(model, IDS, add_after=layer, vector=torch.zeros_like(vector))
    steered_by_hand = manual_logits(model, IDS, add_after=layer, vector=vector)

    # Execute
    with torch.no_grad(), sites.hooked(model, {f"resid.{layer}": lambda h: h + vector}):
        steered = model(input_ids=IDS).logits
    with torch.no_grad():
        plain = model(input_ids=IDS).logits

    # Assert: the hand-written forward is the model's, and the hook steers it the same way
    torch.testing.assert_close(plain_by_hand, plain, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(steered, plain, atol=1e-3)
    torch.testing.assert_close(steered, steered_by_hand, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_cache_records_what_the_hooked_model_used(name):
    # Prepare
    model = BUILDERS[name]()
    vector = torch.full((model.config.hidden_size,), 0.5)
    with torch.no_grad():
        _, plain = sites.run_with_cache(model, names=["resid.1"], input_ids=IDS)

    # Execute
    with torch.no_grad():
        _, steered = sites.run_with_cache(model, names=["resid.1"],
                                          hooks={"resid.1": lambda h: h + vector}, input_ids=IDS)

    # Assert
    torch.testing.assert_close(steered["resid.1"], plain["resid.1"] + vector)
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
